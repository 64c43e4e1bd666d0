import Foundation
import RampartCore

/// An EC2 Query request's parameters (`application/x-www-form-urlencoded`), read strictly:
/// a name given twice, a malformed escape, invalid UTF-8, a list whose indices are not exactly
/// 1…N (a gap, a leading zero, more than `maxListLength`) and any parameter the action did not
/// read are client errors (400), never guessed at.
public final class Form: @unchecked Sendable {
    /// At most this many parameters in one request.
    public static let maxParameters = 10_000
    /// At most this many elements in one list.
    public static let maxListLength = 1000

    public let values: [String: String]
    private var used = Set<String>()

    public init(_ values: [String: String]) throws(EC2Error) {
        if values.count > Self.maxParameters {
            throw .invalidParameter("too many parameters (\(values.count); at most \(Self.maxParameters))")
        }
        self.values = values
    }

    /// Parses a form body (or a query string).
    public convenience init(encoded: some Collection<UInt8>) throws(EC2Error) {
        var out: [String: String] = [:]
        for pair in encoded.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
            let kv = pair.split(separator: UInt8(ascii: "="), maxSplits: 1, omittingEmptySubsequences: false)
            let key = try Self.decode(kv[0])
            let value = kv.count > 1 ? try Self.decode(kv[1]) : ""
            if key.isEmpty { throw .invalidParameter("a parameter has an empty name") }
            if out[key] != nil { throw .invalidParameter("the parameter \(key) is given more than once") }
            out[key] = value
            if out.count > Self.maxParameters { throw .invalidParameter("too many parameters (at most \(Self.maxParameters))") }
        }
        try self.init(out)
    }

    /// Percent-decoding, `+` as space, then UTF-8 (strict).
    static func decode(_ bytes: some Collection<UInt8>) throws(EC2Error) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = bytes.startIndex
        while i != bytes.endIndex {
            let b = bytes[i]
            if b == UInt8(ascii: "%") {
                let j = bytes.index(after: i)
                guard j != bytes.endIndex, bytes.index(after: j) != bytes.endIndex,
                      let hi = hexDigitValue(bytes[j]), let lo = hexDigitValue(bytes[bytes.index(after: j)])
                else { throw .invalidParameter("malformed percent-encoding in the request") }
                out.append(hi << 4 | lo)
                i = bytes.index(j, offsetBy: 2)
                continue
            }
            out.append(b == UInt8(ascii: "+") ? UInt8(ascii: " ") : b)
            i = bytes.index(after: i)
        }
        guard let s = String(validating: out, as: UTF8.self) else { throw .invalidParameter("the request is not valid UTF-8") }
        return s
    }

    // MARK: reading

    /// A parameter's value (and marks it read).
    public func string(_ name: String) -> String? {
        guard let v = values[name] else { return nil }
        used.insert(name)
        return v
    }

    public func required(_ name: String) throws(EC2Error) -> String {
        guard let v = string(name) else { throw .missing(name) }
        return v
    }

    /// `true` or `false` (absent: false).
    public func bool(_ name: String) throws(EC2Error) -> Bool {
        guard let v = string(name) else { return false }
        switch v.lowercased() {
        case "true": return true
        case "false": return false
        default: throw .invalidParameter("Invalid value '\(v)' for \(name): expecting true or false")
        }
    }

    /// A decimal integer (optional sign).
    public func int(_ name: String) throws(EC2Error) -> Int? {
        guard let v = string(name) else { return nil }
        let digits = v.hasPrefix("-") ? v.dropFirst() : Substring(v)
        guard !digits.isEmpty, digits.count <= 10, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(v) else {
            throw .invalidParameter("Invalid value '\(v)' for \(name): expecting an integer")
        }
        return n
    }

    /// The indices of the list `prefix` (`prefix.1`, `prefix.1.Key`, …): exactly 1…N, each
    /// written without leading zeros, N ≤ `maxListLength`. Empty when the list is absent.
    public func indices(_ prefix: String) throws(EC2Error) -> [Int] {
        let head = prefix + "."
        var seen = Set<Int>()
        for key in values.keys where key.hasPrefix(head) {
            let rest = key.dropFirst(head.count)
            let component = rest.prefix { $0 != "." }
            guard !component.isEmpty, component.count <= 6, component.allSatisfy({ $0.isASCII && $0.isNumber }),
                  component.first != "0", let n = Int(component)
            else { throw .invalidParameter("\(key): list index '\(component)' is not a number from 1") }
            if n > Self.maxListLength { throw .invalidParameter("\(prefix): more than \(Self.maxListLength) elements") }
            seen.insert(n)
        }
        let sorted = seen.sorted()
        for (i, n) in sorted.enumerated() where n != i + 1 {
            throw .invalidParameter("\(prefix): element \(i + 1) is missing (indices must be 1 to N)")
        }
        return sorted
    }

    /// A list of strings `prefix.1 … prefix.N`.
    public func strings(_ prefix: String) throws(EC2Error) -> [String] {
        var out: [String] = []
        for i in try indices(prefix) {
            guard let v = string("\(prefix).\(i)") else { throw .missing("\(prefix).\(i)") }
            out.append(v)
        }
        return out
    }

    /// The parameters no one read, sorted.
    public var unread: [String] { values.keys.filter { !used.contains($0) }.sorted() }
}
