import Foundation

/// A throwaway PKI made with the openssl CLI (`scripts/setup` installs it), for tests and
/// benchmarks that speak TLS: two CAs, `ca` (the one a test trusts) and `other` (one it does
/// not), and certificates signed by either with the subject alternative names asked for. EC
/// P-256 keys, valid for a day, in a fresh private directory that `remove()` deletes.
public struct ThrowawayPKI: Sendable {
    /// The directory: `<name>.pem` (certificate), `<name>.key` (its key, mode 0600).
    public let directory: String

    /// Makes the directory and the two CAs, `ca.pem` and `other.pem`.
    public init() throws {
        var template = Array("/tmp/rampart-pki-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw HarnessError("mkdtemp: \(errnoText(errno))") }
        directory = String(cString: made)
        for ca in ["ca", "other"] {
            try Self.openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                              "-subj", "/CN=rampart test \(ca)", "-keyout", path("\(ca).key"), "-out", path("\(ca).pem")])
        }
    }

    /// A file of the directory.
    public func path(_ name: String) -> String { directory + "/" + name }

    /// Makes `<name>.pem` and `<name>.key` (mode 0600): common name `commonName`, signed by `ca`,
    /// with `altNames` (`DNS:localhost`, `IP:127.0.0.1`) when given.
    @discardableResult
    public func certificate(_ name: String, commonName: String, altNames: [String] = [], ca: String = "ca") throws -> (certificate: String, key: String) {
        try Self.openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=\(commonName)",
                          "-keyout", path("\(name).key"), "-out", path("\(name).csr")])
        let ext = altNames.isEmpty ? "basicConstraints=CA:FALSE\n" : "subjectAltName=\(altNames.joined(separator: ","))\n"
        try ext.write(toFile: path("\(name).ext"), atomically: true, encoding: .utf8)
        try Self.openssl(["x509", "-req", "-in", path("\(name).csr"), "-CA", path("\(ca).pem"), "-CAkey", path("\(ca).key"),
                          "-CAcreateserial", "-days", "1", "-extfile", path("\(name).ext"), "-out", path("\(name).pem")])
        guard chmod(path("\(name).key"), 0o600) == 0 else { throw HarnessError("chmod \(path("\(name).key")): \(errnoText(errno))") }
        return (path("\(name).pem"), path("\(name).key"))
    }

    /// Deletes the directory.
    public func remove() { try? FileManager.default.removeItem(atPath: directory) }

    private static func openssl(_ args: [String]) throws { _ = try runCommand(["openssl"] + args, check: true) }
}
