#if canImport(Glibc)
import Glibc
#endif

// The one way Rampart starts a process: `ip`, `nft`, `iptables-restore`, `ipset`, `ping`, the
// CLI from the demo, `rampartd` from the tests. Synchronous on purpose: the iptables backend and
// the harness are synchronous, and swift-subprocess (async, its own executor) would force an
// async caller or a blocked thread around every call. posix_spawn (vfork-like, no Foundation
// `Process` with its tens of milliseconds of set-up, which would also flatter Rampart in the
// benchmarks' baselines) from the calling thread, which lets a child start inside a network
// namespace: it inherits the namespace of the thread that spawned it, so no `ip netns exec`.
//
// Input and output go through anonymous in-memory files (memfd), not pipes: neither side can
// block on a full pipe, no thread drains anything, and a child that exits without reading its
// input (a refusal) cannot make the caller fail with EPIPE or die of SIGPIPE.

/// A command to run: the program and its arguments (no shell), its input, where its output
/// goes, its network namespace and environment.
public struct Command: Sendable, CustomStringConvertible {
    /// What the child reads on stdin.
    public enum Input: Sendable, Hashable {
        /// /dev/null.
        case none
        case bytes([UInt8])
        /// A file, opened by the caller before the child starts.
        case file(String)

        public static func text(_ s: String) -> Input { .bytes(Array(s.utf8)) }
    }

    /// Where the child's stdout and stderr go.
    public enum Output: Sendable, Hashable {
        /// Kept, returned by `run()` (and by `ChildProcess.output()`).
        case capture
        /// /dev/null: for timing external programs, where reading their output is not theirs.
        case discard
        /// The caller's own stdout and stderr.
        case inherit
    }

    /// The program (looked up in `searchPath` unless it contains a `/`) and its arguments.
    public var arguments: [String]
    public var input: Input
    public var output: Output
    /// The network namespace the child starts in.
    public var namespace: NetworkNamespace
    /// Variables set (or replaced) in the child's environment, which is otherwise the caller's
    /// with PATH = `searchPath`.
    public var environment: [String: String]
    /// Seconds `run()` waits before it kills the child (SIGKILL) and throws `.timedOut`; nil
    /// waits for ever.
    public var timeout: Double?

    public init(_ arguments: [String], input: Input = .none, output: Output = .capture,
                in namespace: NetworkNamespace = .current, environment: [String: String] = [:], timeout: Double? = nil) {
        self.arguments = arguments
        self.input = input
        self.output = output
        self.namespace = namespace
        self.environment = environment
        self.timeout = timeout
    }

    /// The system directories first (the tools Rampart runs live there, and a root daemon's
    /// PATH may lack them), then the caller's PATH.
    public static var searchPath: String {
        let system = "/usr/sbin:/usr/bin:/sbin:/bin"
        guard let inherited = getenv("PATH").map({ String(cString: $0) }), !inherited.isEmpty else { return system }
        return system + ":" + inherited
    }

    /// The executable the command names, or nil when none is found.
    public func executable() -> String? {
        guard let program = arguments.first, !program.isEmpty else { return nil }
        if program.contains("/") { return access(program, X_OK) == 0 ? program : nil }
        for dir in Self.searchPath.split(separator: ":") where !dir.isEmpty {
            let candidate = "\(dir)/\(program)"
            var st = stat()
            if access(candidate, X_OK) == 0, stat(candidate, &st) == 0, st.st_mode & S_IFMT == S_IFREG { return candidate }
        }
        return nil
    }

    /// Runs the command to its end and returns its exit status and output.
    public func run() throws(CommandError) -> CommandOutput {
        let child = try spawn()
        let status: Int32
        if let timeout { status = try child.wait(timeout: timeout) } else { status = try child.wait() }
        return try child.collect(status: status)
    }

    /// The command line as text (arguments separated by spaces).
    public var description: String { arguments.joined(separator: " ") }
}

/// How a command ended: its status (the exit code, or 128 + the signal that killed it, as a
/// shell reports it) and its output when captured.
public struct CommandOutput: Sendable, Hashable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var succeeded: Bool { status == 0 }

    public init(status: Int32, stdout: String, stderr: String) {
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
    }
}

/// A command that could not be run to its end; names the command.
public struct CommandError: Error, Sendable, CustomStringConvertible {
    public enum Reason: Sendable, Hashable {
        /// The program is not an executable file in the search path.
        case notFound(searchPath: String)
        /// A system call failed (opening the input, posix_spawn, entering the namespace, waitpid, ...).
        case systemCall(SystemCallError)
        /// The network namespace to start it in does not exist.
        case noSuchNamespace(String)
        /// It ran longer than its timeout and was killed.
        case timedOut(seconds: Double)
    }

    public var command: [String]
    public var reason: Reason

    public init(command: [String], reason: Reason) {
        self.command = command
        self.reason = reason
    }

    public var description: String {
        let c = command.joined(separator: " ")
        return switch reason {
        case .notFound(let path): "cannot run \(c): \(command.first ?? "(no program)") not found (searched \(path))"
        case .systemCall(let e): "cannot run \(c): \(e)"
        case .noSuchNamespace(let n): "cannot run \(c): \(NoSuchNamespaceError(name: n))"
        case .timedOut(let s): "\(c) did not finish within \(s) s and was killed"
        }
    }
}
