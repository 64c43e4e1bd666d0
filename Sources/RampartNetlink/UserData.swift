/// Rule userdata: a list of TLVs (type byte, length byte, value), the format nft uses.
/// nft shows type 0 as the rule's comment and ignores types it does not know, so Rampart
/// keeps its private tag (a content hash) in a type of its own beside the comment.
enum RuleUserData {
    /// `NFTNL_UDATA_RULE_COMMENT`: a NUL-terminated string.
    static let commentType: UInt8 = 0
    /// Rampart's tag. High enough to stay clear of the types nft defines.
    static let tagType: UInt8 = 0xA5
    /// The kernel's limit on userdata (`NFT_USERDATA_MAXLEN`).
    static let maxLength = 256
    /// nft refuses to print comments longer than this (`NFT_USERDATA_MAXLEN` / 2).
    static let maxCommentLength = 128

    static func encode(comment: String?, tag: [UInt8]?) throws(NetlinkError) -> [UInt8] {
        var out: [UInt8] = []
        if let comment {
            let bytes = Array(comment.utf8)
            guard bytes.count < maxCommentLength, !bytes.contains(0) else {
                throw .protocolError("rule comment is longer than \(maxCommentLength - 1) bytes or contains NUL: \(comment.prefix(40))…")
            }
            out += [commentType, UInt8(bytes.count + 1)] + bytes + [0]
        }
        if let tag {
            guard tag.count <= 64 else { throw .protocolError("rule tag is longer than 64 bytes") }
            out += [tagType, UInt8(tag.count)] + tag
        }
        guard out.count <= maxLength else { throw .protocolError("rule userdata exceeds \(maxLength) bytes") }
        return out
    }

    static func decode(_ bytes: [UInt8]) -> (comment: String?, tag: [UInt8]?) {
        var comment: String?
        var tag: [UInt8]?
        var i = 0
        while i + 2 <= bytes.count {
            let type = bytes[i], len = Int(bytes[i + 1])
            guard i + 2 + len <= bytes.count else { break }
            let value = Array(bytes[(i + 2)..<(i + 2 + len)])
            switch type {
            case commentType:
                comment = String(decoding: value.prefix { $0 != 0 }, as: UTF8.self)
            case tagType:
                tag = value
            default:
                break
            }
            i += 2 + len
        }
        return (comment, tag)
    }
}
