package android.content.res;

import java.io.File;
import java.io.FileInputStream;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStream;

public final class AssetManager {
    private final String root;

    public AssetManager(String root) { this.root = root; }

    public InputStream open(String fileName) throws IOException {
        File f = new File(root, fileName);
        if (!f.isFile()) throw new FileNotFoundException(fileName);
        return new FileInputStream(f);
    }
}
