import Crypto
import Foundation
import RampartSystem

/// The relay's per-host tokens: a file of `HOST TOKEN` lines (blank lines and `#` comments
/// ignored), mode 0600 or stricter: a file that group or others can read is refused, as the
/// EC2 API's key file is, because anyone who reads it can follow every host's log. The daemon's
/// `--relay-token-file` has the same format (its own host's line is used).
public struct TokenFile: Sendable {
    /// Host → token.
    public let tokens: [String: String]
    /// SHA-256 of each token → its host: finds whose a presented token is without comparing it
    /// against every host's (`authenticate` then compares the real token in constant time).
    private let owners: [Data: String]

    /// Tokens shorter than this are refused (a guessable token is no authentication).
    public static let minimumTokenLength = 16

    /// Reads and checks `path` (`SecretFile`: a regular file of this process's user, not readable
    /// or writable by group or others, not reached through a symbolic link), every line `HOST TOKEN`, no host twice, no token twice, tokens of at least 16 characters.
    public init(path: String) throws(RelayError) {
        let text: String
        do { text = try SecretFile.read(path, what: "the token file") } catch { throw RelayError(error.description) }
        try self.init(text: text, source: path)
    }

    /// Parses the file's text (`source` names it in errors).
    public init(text: String, source: String = "tokens") throws(RelayError) {
        var tokens: [String: String] = [:]
        var owners: [Data: String] = [:]
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count == 2 else { throw RelayError("\(source):\(n + 1): expected `HOST TOKEN`") }
            let host = String(fields[0]), token = String(fields[1])
            guard token.count >= Self.minimumTokenLength else {
                throw RelayError("\(source):\(n + 1): the token of \(host) is shorter than \(Self.minimumTokenLength) characters")
            }
            guard tokens[host] == nil else { throw RelayError("\(source):\(n + 1): host \(host) is listed twice") }
            let digest = Self.digest(token)
            guard owners[digest] == nil else { throw RelayError("\(source):\(n + 1): the token of \(host) is also another host's") }
            tokens[host] = token
            owners[digest] = host
        }
        guard !tokens.isEmpty else { throw RelayError("\(source): no `HOST TOKEN` line") }
        self.tokens = tokens
        self.owners = owners
    }

    /// Nil if `token` is `host`'s; else why the hello is refused (a token of another host is
    /// named as such: a daemon may only follow its own host).
    public func refusal(host: String, token: String) -> String? {
        guard let expected = tokens[host] else {
            return "host \(host) has no token at this relay"
        }
        if Self.constantTimeEquals(expected, token) { return nil }
        if let owner = owners[Self.digest(token)], owner != host {
            return "this token is not host \(host)'s: a daemon may only subscribe to its own host"
        }
        return "wrong token for host \(host)"
    }

    private static func digest(_ token: String) -> Data { Data(SHA256.hash(data: Data(token.utf8))) }

    /// Compares in time that depends only on the lengths, not on where the strings differ.
    public static func constantTimeEquals(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        var diff = UInt8(x.count == y.count ? 0 : 1)
        for i in 0..<max(x.count, y.count) {
            diff |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0)
        }
        return diff == 0
    }
}
