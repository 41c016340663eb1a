import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.lang.reflect.Field;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * A JVM started ahead for one run: says it is ready on fd 5, reads the run's java arguments
 * (NUL-terminated each: options, -cp PATH, the main class, the program's arguments) on fd 4,
 * and runs the main class as `java -cp PATH Main args` would.
 */
public final class CodBoot {
    /**
     * Descriptor {@code n}, inherited from cod. (Reopening it through /proc is not allowed: the
     * pipe belongs to cod's uid.) Needs {@code --add-opens java.base/java.io=ALL-UNNAMED}.
     */
    private static FileDescriptor descriptor(int n) throws ReflectiveOperationException {
        FileDescriptor d = new FileDescriptor();
        Field f = FileDescriptor.class.getDeclaredField("fd");
        f.setAccessible(true);
        f.setInt(d, n);
        return d;
    }

    public static void main(String[] ignored) throws Throwable {
        try (FileOutputStream ready = new FileOutputStream(descriptor(5))) {
            ready.write('R');
        }
        java.io.ByteArrayOutputStream bytes = new java.io.ByteArrayOutputStream();
        try (FileInputStream in = new FileInputStream(descriptor(4))) {
            byte[] buf = new byte[65536];
            for (int n; (n = in.read(buf)) > 0; ) {
                bytes.write(buf, 0, n);
            }
        }
        byte[] all = bytes.toByteArray();
        List<String> argv = new ArrayList<>();
        int start = 0;
        for (int i = 0; i < all.length; i++) {
            if (all[i] == 0) {
                argv.add(new String(all, start, i - start, StandardCharsets.UTF_8));
                start = i + 1;
            }
        }
        int cp = argv.indexOf("-cp");
        if (cp < 0 || cp + 2 > argv.size()) {
            System.err.println("Error: no class to run");
            System.exit(1);
        }
        String classPath = argv.get(cp + 1);
        String mainName = argv.get(cp + 2);
        String[] args = argv.subList(cp + 3, argv.size()).toArray(new String[0]);
        System.setProperty("java.class.path", classPath);
        URL[] urls = Arrays.stream(classPath.split(":"))
                .map(p -> {
                    try {
                        return Path.of(p).toAbsolutePath().toUri().toURL();
                    } catch (Exception e) {
                        throw new IllegalArgumentException(e);
                    }
                })
                .toArray(URL[]::new);
        ClassLoader loader = new URLClassLoader(urls, ClassLoader.getPlatformClassLoader());
        Thread.currentThread().setContextClassLoader(loader);
        Class<?> main;
        Method m;
        try {
            main = Class.forName(mainName, false, loader);
            m = main.getMethod("main", String[].class);
            if (!Modifier.isStatic(m.getModifiers())) {
                throw new NoSuchMethodException();
            }
        } catch (ClassNotFoundException | LinkageError e) {
            System.err.println("Error: Could not find or load main class " + mainName);
            System.err.println("Caused by: " + e);
            System.exit(1);
            return;
        } catch (NoSuchMethodException e) {
            System.err.println("Error: Main method not found in class " + mainName
                    + ", please define the main method as:");
            System.err.println("   public static void main(String[] args)");
            System.err.println("or a JavaFX application class must extend javafx.application.Application");
            System.exit(1);
            return;
        }
        m.setAccessible(true);
        try {
            m.invoke(null, (Object) args);
        } catch (InvocationTargetException e) {
            // Thrown on as the program threw it, without the frames of this launcher: the
            // JVM prints it as for any main thread and exits with 1.
            Throwable t = e.getCause();
            StackTraceElement[] st = t.getStackTrace();
            int keep = st.length;
            for (int i = 0; i < st.length; i++) {
                String c = st[i].getClassName();
                if (c.startsWith("jdk.internal.reflect.") || c.equals("java.lang.reflect.Method")
                        || c.equals("CodBoot")) {
                    keep = i;
                    break;
                }
            }
            t.setStackTrace(Arrays.copyOf(st, keep));
            throw t;
        }
    }
}
