import Foundation

extension HypervisorTopology {
    /// `rt-<name>-<pid>-<n>`: the node name reduced to [A-Za-z0-9_] and 12 characters.
    static func namespacePrefix(_ name: String) -> String {
        let cleaned = String(name.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") ? $0 : "_" }.prefix(12))
        return cleaned.isEmpty ? "n" : cleaned
    }

    static func validate(_ spec: TopologySpec, hypervisorName: String) throws {
        var names: Set<String> = [hypervisorName]
        var devices: Set<String> = ["lo"]
        var addresses: Set<String> = []
        func address(_ a: String, of owner: String) throws {
            guard !a.contains("/"), let c = canonicalAddress(a) else {
                throw HarnessError("\(owner): \(a) is not a bare IPv4 or IPv6 address")
            }
            guard addresses.insert(c).inserted else { throw HarnessError("\(owner): address \(a) is used twice") }
        }
        func device(_ d: String, of owner: String) throws {
            try checkInterfaceName(d, of: owner)
            guard devices.insert(d).inserted else { throw HarnessError("\(owner): interface \(d) is used twice") }
        }
        for a in spec.hypervisorAddresses { try address(a, of: hypervisorName) }
        let all = spec.instances.map { ($0.name, $0.interface, $0.addresses) }
            + spec.outside.enumerated().map { i, o in (o.name, o.interface ?? "up\(i)", o.addresses) }
        for (name, tap, addrs) in all {
            guard !name.isEmpty, names.insert(name).inserted else {
                throw HarnessError("node name \"\(name)\" is empty, reserved or used twice")
            }
            try device(tap, of: name)
            for a in addrs { try address(a, of: name) }
        }
    }
}

/// Throws unless `name` can be a Linux interface name: 1–15 bytes, not "." or "..", no `/`,
/// `:` or white space.
func checkInterfaceName(_ name: String, of owner: String) throws {
    let ok = (1...15).contains(name.utf8.count) && name != "." && name != ".."
        && !name.contains { $0 == "/" || $0 == ":" || $0.isWhitespace }
    guard ok else { throw HarnessError("\(owner): \"\(name)\" is not a Linux interface name (1–15 characters, no / : or space)") }
}
