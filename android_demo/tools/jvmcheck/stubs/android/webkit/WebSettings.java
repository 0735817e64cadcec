package android.webkit;

public abstract class WebSettings {
    public static final int MIXED_CONTENT_ALWAYS_ALLOW = 0;
    public abstract void setJavaScriptEnabled(boolean flag);
    public abstract void setDomStorageEnabled(boolean flag);
    public abstract void setAllowFileAccess(boolean allow);
    public abstract void setAllowContentAccess(boolean allow);
    public abstract void setMixedContentMode(int mode);
}
