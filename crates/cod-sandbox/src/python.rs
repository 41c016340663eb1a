//! CPython embedded in a zygote: `libpython` is loaded at run time with `dlopen`, so cod is
//! neither linked against it nor needs it to start (without it, Python runs cold).
//!
//! Only the stable, long-standing entry points are used (`Py_InitializeEx`,
//! `PyRun_SimpleFileExFlags`, `PyOS_AfterFork_Child`, ...), no struct layouts, so the
//! binding does not depend on the minor version. A bindings crate such as pyo3 links
//! against one libpython at build time, which is what this avoids.
//!
//! Lifecycle: [`Python::load`] and [`Python::initialize`] in the zygote, which then only
//! forks ([`Python::before_fork`], [`Python::after_fork_parent`]); each run's process calls
//! [`Python::run_main`], which never returns.
//!
//! A run ends the way `python3 main.py` ends as far as a program can tell (non-daemon
//! threads joined, `atexit` functions run, `__main__`'s globals released so that their
//! `__del__` methods run, the standard streams flushed, the same exit status), but without
//! the rest of `Py_FinalizeEx`: tearing down every module of a forked copy of the zygote
//! touches (and so copies) most of its memory, and took 5 of the 5.5 ms of a `print(1)`.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

type Obj = *mut c_void;

/// The entry points of libpython that the zygote uses.
pub(crate) struct Python {
    set_program_name: unsafe extern "C" fn(*const libc::wchar_t),
    decode_locale: unsafe extern "C" fn(*const c_char, *mut usize) -> *mut libc::wchar_t,
    initialize_ex: unsafe extern "C" fn(c_int),
    run_string: unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int,
    before_fork: unsafe extern "C" fn(),
    after_fork_parent: unsafe extern "C" fn(),
    after_fork_child: unsafe extern "C" fn(),
    decode_fs: unsafe extern "C" fn(*const c_char) -> Obj,
    list_new: unsafe extern "C" fn(isize) -> Obj,
    list_set_item: unsafe extern "C" fn(Obj, isize, Obj) -> c_int,
    tuple_new: unsafe extern "C" fn(isize) -> Obj,
    tuple_set_item: unsafe extern "C" fn(Obj, isize, Obj) -> c_int,
    dict_new: unsafe extern "C" fn() -> Obj,
    dict_set_item: unsafe extern "C" fn(Obj, Obj, Obj) -> c_int,
    sys_get_object: unsafe extern "C" fn(*const c_char) -> Obj,
    call_object: unsafe extern "C" fn(Obj, Obj) -> Obj,
    import_add_module: unsafe extern "C" fn(*const c_char) -> Obj,
    module_get_dict: unsafe extern "C" fn(Obj) -> Obj,
    dict_next: unsafe extern "C" fn(Obj, *mut isize, *mut Obj, *mut Obj) -> c_int,
    incref: unsafe extern "C" fn(Obj),
    decref: unsafe extern "C" fn(Obj),
    err_print: unsafe extern "C" fn(),
    err_clear: unsafe extern "C" fn(),
    none: Obj,
    /// The runner function (see [`RUNNER`]), once initialised.
    runner: Obj,
    /// The runner's `clear` and `end` functions.
    clear: Obj,
    end: Obj,
    /// `__main__`'s dict, and its entries as the zygote left them (each a reference of ours).
    main: Obj,
    main_entries: Vec<(Obj, Obj)>,
    /// The runner's `prime` function.
    prime: Obj,
}

/// Why the interpreter could not be loaded or started.
#[derive(Debug)]
pub(crate) struct PythonError(pub(crate) String);

/// Defines the functions a run calls: `run(path, argv, orig_argv, env, path0)` runs the
/// script at `path` in `__main__` as `python3` does, up to its `atexit` functions;
/// `clear()` then releases `__main__`'s globals (only when the run left something there of
/// its own, see [`Python::run_main`]) and `end()` flushes the streams and ends the process
/// with the run's status. `prime()` is called by a run's process while it waits for its
/// run. Everything they use is bound before any program runs, so a program that rebinds
/// builtins or `sys` attributes cannot break how its own run ends. It leaves nothing in
/// `__main__`.
const RUNNER: &CStr = c"
def _cod_make():
    import sys, os, signal, atexit
    main = sys.modules['__main__'].__dict__
    _compile, _exec, _open, _isinstance, _int, _str = compile, exec, open, isinstance, int, str
    _BaseException, _SystemExit, _KeyboardInterrupt = BaseException, SystemExit, KeyboardInterrupt
    _list, _modules = list, sys.modules

    def exit_code(e):
        code = e.code
        if code is None:
            return 0
        if _isinstance(code, _int):
            return code
        try:
            sys.stderr.write(_str(code) + '\\n')
        except _BaseException:
            pass
        return 1

    # What `run` leaves for `end`: the exit status and whether the run was interrupted.
    state = [0, False]

    def clear():
        # As at interpreter shutdown: names starting with one underscore first, then the
        # rest, so that objects held by module globals are released and finalized. Called
        # only when `__main__` holds something the zygote's did not (see `run_main`).
        try:
            for first in (True, False):
                for k in _list(main):
                    if k != '__builtins__' and (not first or (k[:1] == '_' and k[:2] != '__')):
                        main[k] = None
        except _BaseException:
            pass

    def end():
        code, interrupted = state
        for stream, failed in ((sys.stdout, 120), (sys.stderr, None)):
            try:
                if stream is not None:
                    stream.flush()
            except _BaseException:
                if failed is not None and code == 0:
                    code = failed
        if interrupted:
            # As python3 does: end by the signal, so that a shell sees the interrupt.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)

    def run(path, argv, orig_argv, env, path0):
        sys.argv = argv
        sys.orig_argv = orig_argv
        sys.path.insert(0, path0)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        main['__file__'] = path
        main['__cached__'] = None
        interrupted = False
        try:
            with _open(path, 'rb') as f:
                source = f.read()
            _exec(_compile(source, path, 'exec'), main)
            code = 0
        except _SystemExit as e:
            code = exit_code(e)
        except _BaseException as e:
            interrupted = _isinstance(e, _KeyboardInterrupt)
            # The traceback starts with this function's frame: drop it, as python3 has
            # none (the default hook prints the exception's own traceback).
            tb = e.__traceback__
            tb = tb.tb_next if tb is not None else None
            e.__traceback__ = tb
            sys.excepthook(type(e), e, tb)
            code = 1
        main.pop('__file__', None)
        main.pop('__cached__', None)
        threading = _modules.get('threading')
        if threading is not None:
            try:
                threading._shutdown()
            except _BaseException:
                pass
        atexit._run_exitfuncs()
        state[0], state[1] = code, interrupted

    # What the first run would otherwise set up itself, in every run's copy: the compiler's
    # AST types (1.3 ms) and the file-reading path.
    _compile('pass', '<warm-up>', 'exec')
    with _open(os.devnull, 'rb') as f:
        f.read()

    # In a parked copy whose run is slow to come, ahead of it: what compiling and running a small program
    # writes to the interpreter's memory (the compiler's, the allocator's, the reference
    # counts of common objects) is copied from the zygote now rather than during the run.
    # It runs in a namespace of its own and leaves nothing behind.
    prime_source = '''
def f(n):
    return [str(i) for i in range(n)]
d = {k: len(k) for k in f(300)}
s = str(sorted(d)) + repr(len(d))
'''
    def prime():
        try:
            _exec(_compile(prime_source, '<prime>', 'exec'), {})
            with _open(os.devnull, 'rb') as f:
                f.read()
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
        except _BaseException:
            pass

    return run, clear, end, prime

import sys as _cod_sys
_cod_sys._cod_run, _cod_sys._cod_clear, _cod_sys._cod_end, _cod_sys._cod_prime = _cod_make()
del _cod_sys, _cod_make
";

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by libc, valid until the
    // next dl* call; it is copied at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, NUL-terminated (see above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// The address of `name` in `lib`, as a `T` (a function pointer or object pointer type).
///
/// # Safety
///
/// `lib` must be a live dlopen handle, and `T` must be the pointer type of the symbol's C
/// declaration.
unsafe fn symbol<T: Copy>(lib: *mut c_void, name: &CStr) -> Result<T, PythonError> {
    const { assert!(std::mem::size_of::<T>() == std::mem::size_of::<*mut c_void>()) };
    // SAFETY: `lib` is a live handle (the caller's promise); `name` is NUL-terminated.
    let p = unsafe { libc::dlsym(lib, name.as_ptr()) };
    if p.is_null() {
        return Err(PythonError(format!(
            "{}: {}",
            name.to_string_lossy(),
            dl_error()
        )));
    }
    // SAFETY: `T` is a pointer type of the same size (checked above) matching the symbol's
    // declaration (the caller's promise).
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

macro_rules! symbol {
    ($lib:expr, $name:literal) => {
        // SAFETY: `$lib` is a handle returned by dlopen and never closed; each field's type
        // is the C declaration of the symbol it is loaded from (Python's public headers).
        unsafe { symbol($lib, $name)? }
    };
}

impl Python {
    /// Loads `library` (e.g. `/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0`) with its
    /// symbols global, as extension modules expect, and never unloads it.
    pub(crate) fn load(library: &Path) -> Result<Python, PythonError> {
        let path = CString::new(library.as_os_str().as_bytes())
            .map_err(|_| PythonError("the library path contains a NUL byte".into()))?;
        // SAFETY: `path` is NUL-terminated; loading runs libpython's constructors, which only
        // initialise its own static data.
        let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if lib.is_null() {
            return Err(PythonError(dl_error()));
        }
        Ok(Python {
            set_program_name: symbol!(lib, c"Py_SetProgramName"),
            decode_locale: symbol!(lib, c"Py_DecodeLocale"),
            initialize_ex: symbol!(lib, c"Py_InitializeEx"),
            run_string: symbol!(lib, c"PyRun_SimpleStringFlags"),
            before_fork: symbol!(lib, c"PyOS_BeforeFork"),
            after_fork_parent: symbol!(lib, c"PyOS_AfterFork_Parent"),
            after_fork_child: symbol!(lib, c"PyOS_AfterFork_Child"),
            decode_fs: symbol!(lib, c"PyUnicode_DecodeFSDefault"),
            list_new: symbol!(lib, c"PyList_New"),
            list_set_item: symbol!(lib, c"PyList_SetItem"),
            tuple_new: symbol!(lib, c"PyTuple_New"),
            tuple_set_item: symbol!(lib, c"PyTuple_SetItem"),
            dict_new: symbol!(lib, c"PyDict_New"),
            dict_set_item: symbol!(lib, c"PyDict_SetItem"),
            sys_get_object: symbol!(lib, c"PySys_GetObject"),
            call_object: symbol!(lib, c"PyObject_CallObject"),
            import_add_module: symbol!(lib, c"PyImport_AddModule"),
            module_get_dict: symbol!(lib, c"PyModule_GetDict"),
            dict_next: symbol!(lib, c"PyDict_Next"),
            incref: symbol!(lib, c"Py_IncRef"),
            decref: symbol!(lib, c"Py_DecRef"),
            err_print: symbol!(lib, c"PyErr_Print"),
            err_clear: symbol!(lib, c"PyErr_Clear"),
            none: symbol!(lib, c"_Py_NoneStruct"),
            runner: std::ptr::null_mut(),
            clear: std::ptr::null_mut(),
            end: std::ptr::null_mut(),
            main: std::ptr::null_mut(),
            main_entries: Vec::new(),
            prime: std::ptr::null_mut(),
        })
    }

    /// Starts the interpreter as `program` would start (site imported, `SIGINT` raising
    /// `KeyboardInterrupt`, `SIGPIPE` ignored), from the process's current environment, then
    /// imports `preload`. Call once, in the zygote, with fds 0 to 2 on `/dev/null`.
    pub(crate) fn initialize(
        &mut self,
        program: &str,
        preload: &[String],
    ) -> Result<(), PythonError> {
        let program = CString::new(program)
            .map_err(|_| PythonError("the program path contains a NUL byte".into()))?;
        // SAFETY: the string is NUL-terminated; Py_DecodeLocale may be called before
        // Py_Initialize and returns a PyMem_RawMalloc'ed string (or null), which is kept
        // for the life of the process as Py_SetProgramName requires.
        let wide = unsafe { (self.decode_locale)(program.as_ptr(), std::ptr::null_mut()) };
        if wide.is_null() {
            return Err(PythonError("cannot decode the program path".into()));
        }
        // SAFETY: `wide` is a valid wide string that is never freed; initialising with
        // signal handlers (1) is what the `python3` program does.
        unsafe {
            (self.set_program_name)(wide);
            (self.initialize_ex)(1);
        }
        for module in preload {
            if module.is_empty()
                || !module
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                return Err(PythonError(format!("bad module name {module:?}")));
            }
            // Imported for its speed only: the name it binds in `__main__` is removed again,
            // so a program sees the globals a fresh interpreter has.
            let top = module.split('.').next().unwrap_or(module);
            let code =
                CString::new(format!("import {module}\ndel {top}\n")).expect("checked above");
            // SAFETY: the interpreter is initialised and this thread holds the GIL; the code
            // is a NUL-terminated string.
            if unsafe { (self.run_string)(code.as_ptr(), std::ptr::null_mut()) } != 0 {
                return Err(PythonError(format!("importing {module} failed")));
            }
        }
        // SAFETY: as above; the runner is then taken from `sys` (a borrowed reference, made
        // ours) and removed from it.
        unsafe {
            if (self.run_string)(RUNNER.as_ptr(), std::ptr::null_mut()) != 0 {
                return Err(PythonError("defining the runner failed".into()));
            }
            self.runner = self.take_sys(c"_cod_run")?;
            self.clear = self.take_sys(c"_cod_clear")?;
            self.end = self.take_sys(c"_cod_end")?;
            self.prime = self.take_sys(c"_cod_prime")?;
            // Frozen, the zygote's objects are left out of every collection in a run: a
            // full collection would otherwise write to each of them and so copy most of
            // the zygote's memory into the run.
            let code = c"import sys\ndel sys._cod_run, sys._cod_clear, sys._cod_end, sys._cod_prime\ndel sys\nimport gc\ngc.collect()\ngc.freeze()\ndel gc\n";
            if (self.run_string)(code.as_ptr(), std::ptr::null_mut()) != 0 {
                return Err(PythonError("cleaning up after the runner failed".into()));
            }
            // `__main__` as every run starts with it. Its entries are kept referenced, so
            // none of these objects can be freed in a run and another take its address.
            let module = (self.import_add_module)(c"__main__".as_ptr());
            let main = if module.is_null() {
                module
            } else {
                (self.module_get_dict)(module)
            };
            if main.is_null() {
                return Err(PythonError("__main__ has no dict".into()));
            }
            (self.incref)(main);
            self.main = main;
            let mut pos = 0isize;
            let (mut k, mut v) = (std::ptr::null_mut(), std::ptr::null_mut());
            while (self.dict_next)(main, &mut pos, &mut k, &mut v) != 0 {
                (self.incref)(k);
                (self.incref)(v);
                self.main_entries.push((k, v));
            }
        }
        Ok(())
    }

    /// `sys.<name>`, a reference of ours.
    ///
    /// # Safety
    ///
    /// The interpreter is initialised and this thread holds the GIL.
    unsafe fn take_sys(&self, name: &CStr) -> Result<Obj, PythonError> {
        // SAFETY: the caller's promise; PySys_GetObject returns a borrowed reference (or
        // null), made ours here.
        unsafe {
            let o = (self.sys_get_object)(name.as_ptr());
            if o.is_null() {
                return Err(PythonError(format!(
                    "the runner's {} is missing",
                    name.to_string_lossy()
                )));
            }
            (self.incref)(o);
            Ok(o)
        }
    }

    /// Whether `__main__` holds exactly the entries the zygote left there, in the same
    /// order: then releasing its globals would release only objects of the zygote, which
    /// stay referenced and run no code of the program. It reads the dict with borrowed
    /// references, so it writes to no object: in a forked copy, every object written to
    /// copies the page it lives on.
    ///
    /// # Safety
    ///
    /// The GIL is held, and [`initialize`](Self::initialize) succeeded in this process or
    /// the zygote it was forked from.
    unsafe fn main_as_forked(&self) -> bool {
        let mut pos = 0isize;
        let (mut k, mut v) = (std::ptr::null_mut(), std::ptr::null_mut());
        let mut entries = self.main_entries.iter();
        // SAFETY: the caller's promise; `main` is a dict we hold a reference to, and
        // PyDict_Next only reads it (the program cannot run meanwhile: this thread holds
        // the GIL).
        while unsafe { (self.dict_next)(self.main, &mut pos, &mut k, &mut v) } != 0 {
            if entries.next() != Some(&(k, v)) {
                return false;
            }
        }
        entries.next().is_none()
    }

    /// Call in the zygote right before forking.
    pub(crate) fn before_fork(&self) {
        // SAFETY: called from the thread holding the GIL, paired with one of the after_fork
        // functions in each process.
        unsafe { (self.before_fork)() }
    }

    /// Call in the zygote right after forking.
    pub(crate) fn after_fork_parent(&self) {
        // SAFETY: paired with `before_fork` in this process.
        unsafe { (self.after_fork_parent)() }
    }

    /// Call in the child, right after forking (before waiting for its run).
    pub(crate) fn after_fork_child(&self) {
        // SAFETY: this is the child of a fork prepared by `before_fork`, on the thread that
        // held the GIL.
        unsafe { (self.after_fork_child)() }
    }

    /// Call in the child while it waits for its run, after
    /// [`after_fork_child`](Self::after_fork_child): copies ahead the memory a small run
    /// writes (see `prime` in [`RUNNER`]).
    pub(crate) fn prime(&self) {
        if self.prime.is_null() {
            return;
        }
        // SAFETY: the GIL is held (the only thread); `prime` takes no arguments, catches
        // everything it raises, and its result is released (or the error cleared, leaving
        // the interpreter as it was).
        unsafe {
            let r = (self.call_object)(self.prime, std::ptr::null_mut());
            if r.is_null() {
                (self.err_clear)();
            } else {
                (self.decref)(r);
            }
        }
    }

    /// Runs `script` (a path relative to `dir`) as `program script args...` run from `dir`
    /// would, with `env` as `os.environ` when it differs from the zygote's, and ends the
    /// process with the interpreter's status. Call in the run's process, after the fork, once
    /// its descriptors, limits and privileges are those of the program, and
    /// [`after_fork_child`](Self::after_fork_child) ran.
    pub(crate) fn run_main(
        &self,
        dir: &str,
        program: &CStr,
        args: &[&CStr],
        env: Option<&[&CStr]>,
    ) -> ! {
        let Some(script) = args.first() else {
            crate::sys::exit_now(2)
        };
        let path = if script.to_bytes().starts_with(b"/") {
            script.to_bytes().to_vec()
        } else {
            let mut p = dir.as_bytes().to_vec();
            p.push(b'/');
            p.extend_from_slice(script.to_bytes());
            p
        };
        let path = CString::new(path).expect("from C strings");
        let dir = CString::new(dir).expect("no NUL in the work dir");
        let orig: Vec<&CStr> = std::iter::once(program)
            .chain(args.iter().copied())
            .collect();
        // SAFETY: the GIL is held (the only thread: the program's own threads wait for it
        // outside the calls below); every object is created here and handed to the tuple,
        // which steals the references (PyTuple_SetItem), or released. `clear` and `end`
        // take no arguments.
        unsafe {
            let call = self.runner_args(&path, args, &orig, env, &dir);
            if call.is_null() || self.runner.is_null() {
                (self.err_print)();
                crate::sys::exit_now(1)
            }
            let r = (self.call_object)(self.runner, call);
            if r.is_null() {
                (self.err_print)();
                crate::sys::exit_now(1)
            }
            (self.decref)(r);
            if !self.main_as_forked() {
                let r = (self.call_object)(self.clear, std::ptr::null_mut());
                if r.is_null() {
                    (self.err_clear)();
                } else {
                    (self.decref)(r);
                }
            }
            // Returns only if it failed before it could end the process.
            if (self.call_object)(self.end, std::ptr::null_mut()).is_null() {
                (self.err_print)();
            }
        }
        crate::sys::exit_now(1)
    }

    /// `(path, argv, orig_argv, env or None, path0)` for the runner; null on failure.
    unsafe fn runner_args(
        &self,
        path: &CStr,
        args: &[&CStr],
        orig: &[&CStr],
        env: Option<&[&CStr]>,
        dir: &CStr,
    ) -> Obj {
        // SAFETY: (all below) GIL held; PyTuple_SetItem steals the item's reference even
        // when it fails.
        unsafe {
            let env = match env {
                Some(e) => self.dict(e),
                None => {
                    (self.incref)(self.none);
                    self.none
                }
            };
            let items = [
                (self.decode_fs)(path.as_ptr()),
                self.list(args),
                self.list(orig),
                env,
                (self.decode_fs)(dir.as_ptr()),
            ];
            let tuple = (self.tuple_new)(5);
            let mut ok = !tuple.is_null();
            for (i, item) in (0..).zip(items) {
                if item.is_null() {
                    ok = false;
                } else if tuple.is_null() || (self.tuple_set_item)(tuple, i, item) != 0 {
                    ok = false;
                    if tuple.is_null() {
                        (self.decref)(item);
                    }
                }
            }
            if !ok && !tuple.is_null() {
                (self.decref)(tuple);
                return std::ptr::null_mut();
            }
            tuple
        }
    }

    /// A new list of `items` as `str` (decoded as file names are); null on failure.
    unsafe fn list(&self, items: &[&CStr]) -> Obj {
        let Ok(n) = isize::try_from(items.len()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: (all below) GIL held; PyList_SetItem steals the item.
        unsafe {
            let list = (self.list_new)(n);
            if list.is_null() {
                return list;
            }
            for (i, s) in (0..).zip(items) {
                let item = (self.decode_fs)(s.as_ptr());
                if item.is_null() || (self.list_set_item)(list, i, item) != 0 {
                    (self.decref)(list);
                    return std::ptr::null_mut();
                }
            }
            list
        }
    }

    /// A new dict of `env` entries (`KEY=value`); null on failure.
    unsafe fn dict(&self, env: &[&CStr]) -> Obj {
        // SAFETY: (all below) GIL held; PyDict_SetItem does not steal.
        unsafe {
            let dict = (self.dict_new)();
            if dict.is_null() {
                return dict;
            }
            for e in env {
                let b = e.to_bytes();
                let Some(eq) = b.iter().position(|&c| c == b'=') else {
                    continue;
                };
                let (Ok(k), Ok(v)) = (CString::new(&b[..eq]), CString::new(&b[eq + 1..])) else {
                    continue;
                };
                let (k, v) = ((self.decode_fs)(k.as_ptr()), (self.decode_fs)(v.as_ptr()));
                let ok = !k.is_null() && !v.is_null() && (self.dict_set_item)(dict, k, v) == 0;
                if !k.is_null() {
                    (self.decref)(k);
                }
                if !v.is_null() {
                    (self.decref)(v);
                }
                if !ok {
                    (self.decref)(dict);
                    return std::ptr::null_mut();
                }
            }
            dict
        }
    }
}
