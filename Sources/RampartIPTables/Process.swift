import Foundation

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

/// Runs a tool, inside a named network namespace if one is given (`ip netns exec`).
struct Runner: Sendable {
    var netns: String?

    func run(_ args: [String], input: String? = nil) throws -> ProcessOutput {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = (netns.map { ["ip", "netns", "exec", $0] } ?? []) + args
        var env = ProcessInfo.processInfo.environment
        env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin:" + (env["PATH"] ?? "")
        p.environment = env
        let out = Pipe(), err = Pipe(), inp = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = inp
        try p.run()
        let data = Data((input ?? "").utf8)
        DispatchQueue.global().async {
            if !data.isEmpty { inp.fileHandleForWriting.write(data) }
            try? inp.fileHandleForWriting.close()
        }
        nonisolated(unsafe) var errData = Data()
        let g = DispatchGroup()
        g.enter()
        DispatchQueue.global().async {
            errData = err.fileHandleForReading.readDataToEndOfFile()
            g.leave()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        g.wait()
        p.waitUntilExit()
        return ProcessOutput(status: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                             stderr: String(decoding: errData, as: UTF8.self))
    }

    func check(_ args: [String], input: String? = nil) throws -> String {
        let r = try run(args, input: input)
        guard r.status == 0 else { throw IPTError(command: args.joined(separator: " "), status: r.status, message: r.stderr) }
        return r.stdout
    }
}
