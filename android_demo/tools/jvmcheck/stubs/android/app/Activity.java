package android.app;

import android.content.Context;
import android.content.Intent;
import android.os.Bundle;
import android.view.View;

public class Activity extends Context {
    public Intent intent;
    public View contentView;
    public boolean superBackPressed, superDestroyed, superCreated, superNewIntent;

    protected void onCreate(Bundle savedInstanceState) { superCreated = true; }
    protected void onNewIntent(Intent i) { superNewIntent = true; }
    protected void onDestroy() { superDestroyed = true; }
    public void onBackPressed() { superBackPressed = true; }
    public Intent getIntent() { return intent; }
    public void setIntent(Intent newIntent) { intent = newIntent; }
    public void setContentView(View view) { contentView = view; }

    // What the framework does (ActivityThread -> Activity.performCreate etc.): lifecycle calls from outside.
    public static void performCreate(Activity a, Bundle b) { a.onCreate(b); }
    public static void performNewIntent(Activity a, Intent i) { a.onNewIntent(i); }
    public static void performDestroy(Activity a) { a.onDestroy(); }
}
