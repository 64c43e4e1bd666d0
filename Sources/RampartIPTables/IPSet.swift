import CIPSet
import Foundation
import RampartSystem

/// Writes ipset commands (`ipset restore` syntax, `-exist` semantics).
public protocol IPSetWriter: AnyObject {
    func apply(_ lines: [String]) throws
    /// How it reaches the kernel, for reports.
    var kind: String { get }
}

public enum IPSetWriters {
    /// libipset in-process when it initialises, else the `ipset` tool.
    public static func best(netns: String?) -> any IPSetWriter {
        LibIPSetWriter(netns: netns) ?? ProcessIPSetWriter(netns: netns)
    }
}

/// One `ipset -exist restore` process per batch (the fallback, and the baseline).
public final class ProcessIPSetWriter: IPSetWriter {
    let runner: Runner
    public var kind: String { "ipset restore (process)" }
    public init(netns: String?) { runner = Runner(netns: netns) }
    public func apply(_ lines: [String]) throws {
        guard !lines.isEmpty else { return }
        _ = try runner.check(["ipset", "-exist", "restore"], input: lines.joined(separator: "\n") + "\n")
    }
}

/// libipset over netlink from this process: no process started. The handle's socket is opened
/// (by the first command) inside the target namespace and stays bound to it.
public final class LibIPSetWriter: IPSetWriter {
    let handle: OpaquePointer
    let namespace: NetworkNamespace
    public var kind: String { "libipset (netlink, in-process)" }

    public init?(netns: String?) {
        guard let h = rampart_ipset_new() else { return nil }
        handle = h
        namespace = netns.map { .named($0) } ?? .current
    }

    deinit { rampart_ipset_free(handle) }

    public func apply(_ lines: [String]) throws {
        guard !lines.isEmpty else { return }
        var err = [CChar](repeating: 0, count: 600)
        let handle = self.handle
        let rc: Int32 = try namespace.perform {
            var cstrs = lines.map { strdup($0) }
            defer { cstrs.forEach { free($0) } }
            return cstrs.withUnsafeMutableBufferPointer { buf in
                buf.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buf.count) { p in
                    rampart_ipset_run(handle, p, buf.count, &err, err.count)
                }
            }
        }
        if rc != 0 {
            throw IPTError(command: "libipset", status: rc, message: String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
    }
}
