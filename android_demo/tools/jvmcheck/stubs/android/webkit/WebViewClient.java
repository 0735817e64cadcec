package android.webkit;

public class WebViewClient {
    public WebViewClient() { }
    public WebResourceResponse shouldInterceptRequest(WebView view, WebResourceRequest request) { return null; }
}
