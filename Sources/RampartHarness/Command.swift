import Foundation

/// The outcome of running an external command.
public struct CommandResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var succeeded: Bool { status == 0 }
}

/// Errors of the harness: a command that had to succeed did not.
public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Runs a command (no shell) and collects its output. The harness uses external tools (`ip`,
/// `nft` as an independent oracle, probes); Rampart's own nftables path never does.
@discardableResult
public func runCommand(_ arguments: [String], input: String? = nil, check: Bool = false) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin:" + (env["PATH"] ?? "")
    process.environment = env
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    let inPipe = Pipe()
    process.standardInput = inPipe
    try process.run()
    if let input {
        let data = Data(input.utf8)
        // Write from another thread: a large input would fill the pipe while the child's
        // output pipes fill too. A child that exits without reading its input (a refusal)
        // closes the pipe: EPIPE is its business, not a crash of the caller (the non-throwing
        // `write(_:)` traps on it).
        DispatchQueue.global().async {
            try? inPipe.fileHandleForWriting.write(contentsOf: data)
            try? inPipe.fileHandleForWriting.close()
        }
    } else {
        try? inPipe.fileHandleForWriting.close()
    }
    // Drain stderr in the background, stdout here, so neither pipe can block the child.
    let errBox = DataBox()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async {
        errBox.data = err.fileHandleForReading.readDataToEndOfFile()
        group.leave()
    }
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    let result = CommandResult(status: process.terminationStatus,
                               stdout: String(decoding: stdout, as: UTF8.self),
                               stderr: String(decoding: errBox.data, as: UTF8.self))
    if check && !result.succeeded {
        throw HarnessError("\(arguments.joined(separator: " ")) exited \(result.status): \(result.stderr)")
    }
    return result
}

private final class DataBox: @unchecked Sendable {
    var data = Data()
}
