import Foundation
#if canImport(Glibc)
import Glibc
#endif
import RampartSystem

/// The store's files on disk: created private (directory 0700, files 0600, whatever the umask),
/// and checked before the root daemon trusts them.
public enum StoreFiles {
    /// The files SQLite keeps beside the database.
    public static func companions(of path: String) -> [String] { [path + "-wal", path + "-shm", path + "-journal"] }

    static func errno() -> String { Errno.current.description }

    static func modeText(_ m: mode_t) -> String { "0" + String(m & 0o7777, radix: 8) }

    /// Creates the missing directories of `dir`, each 0700 (chmod after mkdir, so the umask does
    /// not matter); existing ones are left as they are.
    static func makeDirectories(_ dir: String) throws(StoreError) {
        guard !dir.isEmpty else { return }
        var st = stat()
        if lstat(dir, &st) == 0 { return }
        let parent = (dir as NSString).deletingLastPathComponent
        if parent != dir { try makeDirectories(parent) }
        if mkdir(dir, 0o700) != 0 && Glibc.errno != EEXIST { throw StoreError(.database, "cannot create the store directory \(dir): \(errno())") }
        if chmod(dir, 0o700) != 0 { throw StoreError(.database, "chmod 0700 \(dir): \(errno())") }
    }

    /// Creates the database file empty with mode 0600 if it does not exist. SQLite gives the
    /// -wal, -shm and -journal files it creates later the database file's mode (it copies it
    /// with fchmod, so the umask does not matter there either).
    static func createPrivateFile(_ path: String) throws(StoreError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd < 0 {
            if Glibc.errno == EEXIST { return }
            throw StoreError(.database, "cannot create the store \(path): \(errno())")
        }
        defer { close(fd) }
        if fchmod(fd, 0o600) != 0 { throw StoreError(.database, "chmod 0600 \(path): \(errno())") }
    }

    /// Refuses a store path, or a companion of it, that exists and is not a regular file: SQLite
    /// follows a symbolic link, so a link planted where `rampart --store` points (in a shared
    /// directory, say) would make a root `rampart` verb write a database into the link's target,
    /// and a link at `-wal` or `-journal` would have it write its log there. Any verb, any mode.
    static func refuseNonRegular(_ path: String) throws(StoreError) {
        for p in [path] + companions(of: path) {
            var st = stat()
            guard lstat(p, &st) == 0 else { continue }
            guard st.st_mode & S_IFMT == S_IFREG else {
                throw StoreError(.unsafe, "\(p) is not a regular file (a symbolic link, a directory or a device is refused): not opening the store through it")
            }
        }
    }

    /// What the daemon requires of a store before reading policy from it: the database exists
    /// (only `rampart` verbs and `rampart import` create one) and is a regular file; it, its
    /// companions and its directory are owned by `owner` (root) and not writable by group or
    /// others. Returns warnings (readable by group or others) for the log.
    @discardableResult
    public static func check(_ path: String, owner: uid_t = 0) throws(StoreError) -> [String] {
        var st = stat()
        if lstat(path, &st) != 0 {
            if Glibc.errno == ENOENT {
                throw StoreError(.missing, "no store at \(path) (rampartd never creates one: check --store; `rampart` verbs and `rampart import` create it)")
            }
            throw StoreError(.database, "\(path): \(errno())")
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw StoreError(.unsafe, "the store \(path) is not a regular file (a symbolic link, a directory or a device is refused)")
        }
        var warnings: [String] = []
        func verify(_ p: String, _ s: stat, _ what: String) throws(StoreError) {
            if s.st_uid != owner {
                throw StoreError(.unsafe, "\(what) \(p) is owned by uid \(s.st_uid), not \(owner) (root): refusing to take policy from it")
            }
            if s.st_mode & 0o022 != 0 {
                throw StoreError(.unsafe, "\(what) \(p) has mode \(modeText(s.st_mode)): writable by group or others; refusing it (chmod go-w)")
            }
            if s.st_mode & 0o044 != 0 { warnings.append("\(what) \(p) has mode \(modeText(s.st_mode)): readable by group or others (expected 0600/0700)") }
        }
        try verify(path, st, "the store")
        for c in companions(of: path) {
            var cs = stat()
            if lstat(c, &cs) == 0 {
                guard cs.st_mode & S_IFMT == S_IFREG else { throw StoreError(.unsafe, "\(c) is not a regular file") }
                try verify(c, cs, "the store file")
            }
        }
        var dir = (path as NSString).deletingLastPathComponent
        if dir.isEmpty { dir = "." }
        var ds = stat()
        guard stat(dir, &ds) == 0 else { throw StoreError(.database, "\(dir): \(errno())") }
        try verify(dir, ds, "the store directory")
        return warnings
    }
}
