package android.net;

import java.net.URI;

/** Stub: like android.net.Uri, getPath() is the decoded path and is not normalized. */
public abstract class Uri {
    public abstract String getHost();
    public abstract String getPath();

    public static Uri parse(final String s) {
        final URI u = URI.create(s);
        return new Uri() {
            public String getHost() { return u.getHost(); }
            public String getPath() { return u.getPath(); }
        };
    }
}
