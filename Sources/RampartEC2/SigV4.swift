import Crypto
import Foundation
import RampartSystem
#if canImport(Glibc)
import Glibc
#endif

/// One access key of the key file: its secret and the account (12-digit owner id) it belongs to.
public struct AccessKey: Sendable, Equatable {
    public var id: String
    public var secret: String
    public var account: String
    public init(id: String, secret: String, account: String) {
        self.id = id
        self.secret = secret
        self.account = account
    }
}

/// The access-key file: one key per line, `ACCESS_KEY_ID SECRET_ACCESS_KEY ACCOUNT_ID`
/// (whitespace-separated; `#` starts a comment line; blank lines ignored). It must be a regular
/// file of this process's user that only it can read or write (mode 0600 or stricter), named
/// directly (not through a symbolic link): `SecretFile`.
public enum KeyFile {
    public static func load(_ path: String) throws(EC2Error) -> [String: AccessKey] {
        let text: String
        do { text = try SecretFile.read(path, what: "the key file") } catch { throw EC2Error("KeyFile", error.description) }
        return try parse(text, path: path)
    }

    public static func parse(_ text: String, path: String = "keys") throws(EC2Error) -> [String: AccessKey] {
        var keys: [String: AccessKey] = [:]
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            let at = "\(path):\(n + 1)"
            guard f.count == 3 else { throw EC2Error("KeyFile", "\(at): expected ACCESS_KEY_ID SECRET_ACCESS_KEY ACCOUNT_ID") }
            guard (16...128).contains(f[0].count), f[0].allSatisfy({ $0.isASCII && ($0.isUppercase || $0.isNumber) }) else {
                throw EC2Error("KeyFile", "\(at): the access key id must be 16-128 characters of A-Z 0-9")
            }
            guard f[1].count >= 16 else { throw EC2Error("KeyFile", "\(at): the secret access key is shorter than 16 characters") }
            guard f[2].count == 12, f[2].allSatisfy({ $0.isASCII && $0.isNumber }) else { throw EC2Error("KeyFile", "\(at): the account id must be 12 digits") }
            guard keys[f[0]] == nil else { throw EC2Error("KeyFile", "\(at): access key \(f[0]) is listed twice") }
            keys[f[0]] = AccessKey(id: f[0], secret: f[1], account: f[2])
        }
        return keys
    }
}

/// AWS Signature Version 4 (`AWS4-HMAC-SHA256` in the Authorization header), verified by
/// recomputing the signature from the request as received, with the body hashed here.
public enum SigV4 {
    public static func hex(_ bytes: some Sequence<UInt8>) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    public static func sha256Hex(_ data: some DataProtocol) -> String { hex(SHA256.hash(data: data)) }

    /// RFC 3986 encoding: everything but `A-Z a-z 0-9 - _ . ~` (and `/` when `slash`) escaped.
    public static func uriEncode(_ s: String, keepSlash: Bool = false) -> String {
        var out = ""
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            case UInt8(ascii: "/") where keepSlash:
                out += "/"
            default:
                out += String(format: "%%%02X", b)
            }
        }
        return out
    }

    /// The canonical query string of a raw query (`a=1&b=2`): pairs decoded, re-encoded, sorted.
    static func canonicalQuery(_ raw: String) throws(EC2Error) -> String {
        var pairs: [(String, String)] = []
        for part in raw.split(separator: "&", omittingEmptySubsequences: true) {
            let kv = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let k = try percentDecode(kv[0]), v = kv.count > 1 ? try percentDecode(kv[1]) : ""
            pairs.append((uriEncode(k), uriEncode(v)))
        }
        return pairs.sorted { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }.map { "\($0)=\($1)" }.joined(separator: "&")
    }

    static func percentDecode(_ s: Substring) throws(EC2Error) -> String {
        // In a URL `+` is itself; only a form body reads it as a space.
        try Form.decode(Array(s.replacingOccurrences(of: "+", with: "%2B").utf8))
    }

    /// The canonical request of the Signature Version 4 specification.
    public static func canonicalRequest(method: String, path: String, query: String, headers: [(String, String)],
                                        signedHeaders: [String], payloadHash: String) throws(EC2Error) -> String {
        var values: [String: [String]] = [:]
        for (k, v) in headers {
            let trimmed = v.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            values[k.lowercased(), default: []].append(trimmed)
        }
        var lines = [method, uriEncode(try percentDecode(Substring(path.isEmpty ? "/" : path)), keepSlash: true), try canonicalQuery(query)]
        for h in signedHeaders { lines.append("\(h):\((values[h] ?? []).joined(separator: ","))") }
        lines.append("")
        lines.append(signedHeaders.joined(separator: ";"))
        lines.append(payloadHash)
        return lines.joined(separator: "\n")
    }

    public static func signingKey(secret: String, date: String, region: String, service: String) -> SymmetricKey {
        var key = SymmetricKey(data: Array(("AWS4" + secret).utf8))
        for part in [date, region, service, "aws4_request"] {
            key = SymmetricKey(data: Data(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key)))
        }
        return key
    }

    public static func stringToSign(amzDate: String, scope: String, canonicalRequest: String) -> String {
        "AWS4-HMAC-SHA256\n\(amzDate)\n\(scope)\n\(sha256Hex(Array(canonicalRequest.utf8)))"
    }

    public static func signature(key: SymmetricKey, stringToSign: String) -> String {
        hex(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: key))
    }

    /// The parts of an `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…` header.
    public struct Authorization: Sendable, Equatable {
        public var keyID: String
        public var date: String
        public var region: String
        public var service: String
        public var signedHeaders: [String]
        public var signature: String

        public init(header: String) throws(EC2Error) {
            let prefix = "AWS4-HMAC-SHA256 "
            guard header.hasPrefix(prefix) else {
                throw EC2Error("AuthFailure", "Only AWS4-HMAC-SHA256 (Signature Version 4) authorization is supported", status: 401)
            }
            var fields: [String: String] = [:]
            for part in header.dropFirst(prefix.count).split(separator: ",") {
                let kv = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
                guard kv.count == 2 else { throw Self.incomplete }
                fields[String(kv[0])] = String(kv[1])
            }
            guard let credential = fields["Credential"], let signed = fields["SignedHeaders"], let signature = fields["Signature"] else { throw Self.incomplete }
            let c = credential.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard c.count == 5, c[4] == "aws4_request", c[1].count == 8 else {
                throw EC2Error("IncompleteSignature", "Credential must have the form KEY/YYYYMMDD/REGION/SERVICE/aws4_request")
            }
            keyID = c[0]
            date = c[1]
            region = c[2]
            service = c[3]
            signedHeaders = signed.split(separator: ";").map(String.init)
            self.signature = signature
        }

        static let incomplete = EC2Error("IncompleteSignature", "Authorization header requires Credential, SignedHeaders and Signature")
    }
}

/// Verifies requests against the key file's keys; answers who signed (account) and for which
/// region. `now` is the server's clock; a request dated more than `skew` seconds away from it
/// is refused (`RequestExpired`).
public struct Verifier: Sendable {
    public let keys: [String: AccessKey]
    public var skew: TimeInterval = 300
    public var now: @Sendable () -> Date = { Date() }

    public init(keys: [String: AccessKey]) { self.keys = keys }

    public struct Caller: Sendable, Equatable {
        public var account: String
        public var region: String
    }

    static let dateFormat: DateFormatter = {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return f
    }()

    static func parseDate(_ s: String) -> Date? {
        guard s.count == 16 else { return nil }
        return dateFormat.date(from: s)
    }

    public func verify(method: String, uri: String, headers: [(String, String)], body: [UInt8]) throws(EC2Error) -> Caller {
        func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name }?.1 }
        guard let auth = header("authorization") else {
            if uri.contains("X-Amz-Signature") { throw EC2Error("AuthFailure", "Presigned (query-string) requests are not supported", status: 401) }
            throw EC2Error("AuthFailure", "The request is not signed (no Authorization header)", status: 401)
        }
        let a = try SigV4.Authorization(header: auth)
        guard let key = keys[a.keyID] else {
            throw EC2Error("AuthFailure", "AWS was not able to validate the provided access credentials", status: 401)
        }
        guard a.service == "ec2" else {
            throw EC2Error("SignatureDoesNotMatch", "Credential should be scoped to correct service: 'ec2'", status: 403)
        }
        guard let amzDate = header("x-amz-date"), let when = Self.parseDate(amzDate) else {
            throw EC2Error("AuthFailure", "The request has no valid X-Amz-Date header (yyyyMMddTHHmmssZ)", status: 401)
        }
        guard a.signedHeaders.contains("host"), a.signedHeaders.contains("x-amz-date"),
              a.signedHeaders == a.signedHeaders.sorted(), a.signedHeaders.allSatisfy({ $0 == $0.lowercased() })
        else {
            throw EC2Error("SignatureDoesNotMatch", "SignedHeaders must be sorted lower-case names including host and x-amz-date", status: 403)
        }
        let nowDate = now()
        if abs(when.timeIntervalSince(nowDate)) > skew {
            throw EC2Error("RequestExpired", "Request has expired: its date \(amzDate) is more than \(Int(skew)) seconds from the server's \(Self.dateFormat.string(from: nowDate))")
        }
        guard amzDate.hasPrefix(a.date) else {
            throw EC2Error("SignatureDoesNotMatch", "The credential's date \(a.date) is not the request's date \(amzDate.prefix(8))", status: 403)
        }
        let (path, query) = Self.split(uri)
        let canonical = try SigV4.canonicalRequest(method: method, path: path, query: query, headers: headers,
                                                   signedHeaders: a.signedHeaders, payloadHash: SigV4.sha256Hex(body))
        let scope = "\(a.date)/\(a.region)/\(a.service)/aws4_request"
        let expected = SigV4.signature(key: SigV4.signingKey(secret: key.secret, date: a.date, region: a.region, service: a.service),
                                       stringToSign: SigV4.stringToSign(amzDate: amzDate, scope: scope, canonicalRequest: canonical))
        guard Self.constantTimeEqual(expected, a.signature) else {
            throw EC2Error("SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided", status: 403)
        }
        return Caller(account: key.account, region: a.region)
    }

    static func split(_ uri: String) -> (path: String, query: String) {
        guard let q = uri.firstIndex(of: "?") else { return (uri, "") }
        return (String(uri[..<q]), String(uri[uri.index(after: q)...]))
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var diff: UInt8 = 0
        for i in 0..<x.count { diff |= x[i] ^ y[i] }
        return diff == 0
    }
}
