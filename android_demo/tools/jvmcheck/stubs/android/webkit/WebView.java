package android.webkit;

import android.content.Context;
import android.view.View;

public class WebView extends View {
    public static boolean debuggingEnabled;
    public static WebView last;
    public final Recorder settings = new Recorder();
    public WebViewClient client;
    public WebChromeClient chromeClient;
    public String loadedUrl;
    public boolean backAvailable, wentBack, destroyed;

    public static class Recorder extends WebSettings {
        public boolean js, dom, file = true, content = true;
        public int mixed = -1;
        public void setJavaScriptEnabled(boolean f) { js = f; }
        public void setDomStorageEnabled(boolean f) { dom = f; }
        public void setAllowFileAccess(boolean f) { file = f; }
        public void setAllowContentAccess(boolean f) { content = f; }
        public void setMixedContentMode(int m) { mixed = m; }
    }

    public WebView(Context context) { super(context); last = this; }
    public static void setWebContentsDebuggingEnabled(boolean enabled) { debuggingEnabled = enabled; }
    public WebSettings getSettings() { return settings; }
    public void setWebViewClient(WebViewClient c) { client = c; }
    public void setWebChromeClient(WebChromeClient c) { chromeClient = c; }
    public void loadUrl(String url) { loadedUrl = url; }
    public boolean canGoBack() { return backAvailable; }
    public void goBack() { wentBack = true; }
    public void destroy() { destroyed = true; }
}
