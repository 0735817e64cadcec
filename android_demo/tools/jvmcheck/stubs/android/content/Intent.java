package android.content;

import java.util.HashMap;

public class Intent {
    private final HashMap<String, String> extras = new HashMap<>();

    public Intent putExtra(String name, String value) { extras.put(name, value); return this; }

    public String getStringExtra(String name) { return extras.get(name); }
}
