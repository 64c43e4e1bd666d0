import Foundation
import RampartNetlink

/// The outcome of one external command.
public struct ProcessOutput: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

/// A failed iptables/ipset command: which one, and what it said.
public struct IPTError: Error, CustomStringConvertible, Sendable {
    public var command: String
    public var status: Int32
    public var message: String
    public var description: String { "\(command) failed (status \(status)): \(message.trimmingCharacters(in: .whitespacesAndNewlines))" }
}

/// Runs a tool, inside a named network namespace if one is given. The child is started with
/// posix_spawn from a thread that has entered the namespace (a child inherits its thread's
/// namespace), so no `ip netns exec` (tens of milliseconds) sits in between. Input and output
/// go through unlinked temporary files, so neither side can block on a full pipe.
struct Runner: Sendable {
    var netns: String?

    static let path = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"

    func run(_ args: [String], input: String? = nil) throws -> ProcessOutput {
        func tempFile() throws -> Int32 {
            var template = Array("/tmp/rampart-ipt-XXXXXX".utf8CString)
            let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
            guard fd >= 0 else { throw IPTError(command: args.joined(separator: " "), status: -1, message: "mkstemp: errno \(errno)") }
            template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
            return fd
        }
        let inFD = try tempFile(), outFD = try tempFile(), errFD = try tempFile()
        defer { close(inFD); close(outFD); close(errFD) }
        if let input {
            var bytes = Array(input.utf8)
            var off = 0
            while off < bytes.count {
                let n = bytes.withUnsafeMutableBytes { write(inFD, $0.baseAddress! + off, $0.count - off) }
                guard n > 0 else { throw IPTError(command: args.joined(separator: " "), status: -1, message: "write: errno \(errno)") }
                off += n
            }
            lseek(inFD, 0, SEEK_SET)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inFD, 0)
        posix_spawn_file_actions_adddup2(&actions, outFD, 1)
        posix_spawn_file_actions_adddup2(&actions, errFD, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var env: [UnsafeMutablePointer<CChar>?] = [strdup(Self.path)]
        var e = environ
        while let v = e.pointee {
            if strncmp(v, "PATH=", 5) != 0 { env.append(strdup(v)) }
            e += 1
        }
        env.append(nil)
        defer { for p in env { free(p) } }
        var pid: pid_t = 0
        let ns: NetworkNamespace = netns.map { .named($0) } ?? .current
        let rc = try ns.perform { posix_spawnp(&pid, args[0], &actions, nil, argv, env) }
        guard rc == 0 else { throw IPTError(command: args.joined(separator: " "), status: rc, message: "posix_spawn: \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw IPTError(command: args.joined(separator: " "), status: -1, message: "waitpid: errno \(errno)") }
        }
        func slurp(_ fd: Int32) -> String {
            lseek(fd, 0, SEEK_SET)
            var data = [UInt8]()
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                if n <= 0 { break }
                data += buf[0..<n]
            }
            return String(decoding: data, as: UTF8.self)
        }
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return ProcessOutput(status: code, stdout: slurp(outFD), stderr: slurp(errFD))
    }

    func check(_ args: [String], input: String? = nil) throws -> String {
        let r = try run(args, input: input)
        guard r.status == 0 else { throw IPTError(command: args.joined(separator: " "), status: r.status, message: r.stderr) }
        return r.stdout
    }
}
