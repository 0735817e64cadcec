package android.content;

import android.content.res.AssetManager;
import java.io.File;

/** Stub of android.content.Context: only what the demo's smali calls (signatures match the Android API). */
public abstract class Context {
    public static String ASSETS_ROOT = "assets";
    public static String FILES_DIR = null;

    public AssetManager getAssets() { return new AssetManager(ASSETS_ROOT); }

    public File getExternalFilesDir(String type) { return FILES_DIR == null ? null : new File(FILES_DIR); }
}
