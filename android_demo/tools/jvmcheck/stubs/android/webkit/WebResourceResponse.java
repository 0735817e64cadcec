package android.webkit;

import java.io.InputStream;
import java.util.Map;

public class WebResourceResponse {
    private final String mime, encoding, reason;
    private final int status;
    private final Map<String, String> headers;
    private final InputStream data;

    public WebResourceResponse(String mimeType, String encoding, int statusCode, String reasonPhrase,
                               Map<String, String> responseHeaders, InputStream data) {
        this.mime = mimeType; this.encoding = encoding; this.status = statusCode; this.reason = reasonPhrase;
        this.headers = responseHeaders; this.data = data;
    }
    public String getMimeType() { return mime; }
    public String getEncoding() { return encoding; }
    public int getStatusCode() { return status; }
    public String getReasonPhrase() { return reason; }
    public Map<String, String> getResponseHeaders() { return headers; }
    public InputStream getData() { return data; }
}
