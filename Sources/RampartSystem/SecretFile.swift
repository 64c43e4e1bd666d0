#if canImport(Glibc)
import Glibc
#endif

/// A file of secrets (the relay's tokens, the EC2 API's access keys) read so that what is read
/// is what was checked: opened once without following a symbolic link (and without blocking on
/// a FIFO), then checked on the open descriptor — a regular file, owned by this process's user,
/// neither readable nor writable by group or others, at most `maximumSize` bytes — and read from
/// that descriptor. Checking the path and reading it apart left a window to swap the file, and a
/// file of another owner, even 0600, is that owner's to write: their tokens or keys would be
/// taken as ours.
public enum SecretFile {
    /// Larger files are refused: a token or key file is a few lines per host or key.
    public static let maximumSize = 16 << 20

    /// Why a secret file was refused, in words that name the file (`what`: "the token file").
    public struct Refusal: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// The file's text. `what` names the file in the errors ("the key file").
    public static func read(_ path: String, what: String) throws(Refusal) -> String {
        let fd: Int32
        do {
            fd = try syscall("open(\(path))") { open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC) }
        } catch {
            if error.errno == Errno(ELOOP) { throw Refusal(description: "\(what) \(path) is a symbolic link: name the file itself") }
            throw Refusal(description: "cannot open \(what) \(path): \(error.errno)")
        }
        defer { close(fd) }
        var st = stat()
        do { try syscall("fstat(\(path))") { fstat(fd, &st) } } catch { throw Refusal(description: "\(what) \(path): \(error)") }
        guard st.st_mode & S_IFMT == S_IFREG else { throw Refusal(description: "\(what) \(path) is not a regular file") }
        guard st.st_uid == geteuid() else {
            throw Refusal(description: "\(what) \(path) is owned by uid \(st.st_uid), not by this process's uid \(geteuid()): its owner could write secrets into it (chown it)")
        }
        guard st.st_mode & 0o077 == 0 else {
            throw Refusal(description: "\(what) \(path) has mode 0\(String(st.st_mode & 0o777, radix: 8)): it must be 0600 (chmod 600 \(path))")
        }
        guard st.st_size <= maximumSize else { throw Refusal(description: "\(what) \(path) has \(st.st_size) bytes, more than \(maximumSize)") }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n: Int
            do {
                n = try syscall("read(\(path))") { chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) } }
            } catch { throw Refusal(description: "\(what) \(path): \(error)") }
            if n == 0 { break }
            bytes += chunk[..<n]
            guard bytes.count <= maximumSize else { throw Refusal(description: "\(what) \(path) grew past \(maximumSize) bytes while read") }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw Refusal(description: "\(what) \(path) is not UTF-8 text") }
        return text
    }
}
