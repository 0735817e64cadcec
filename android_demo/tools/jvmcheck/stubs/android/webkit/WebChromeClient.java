package android.webkit;

public class WebChromeClient {
    public WebChromeClient() { }
}
