/// Userdata of tables, chains, sets and rules: TLVs (type byte, length byte, value), the
/// format nft uses. nft shows its comment type as `comment "..."` and ignores types it does not
/// know, so Rampart keeps a private tag (a content hash) in a type of its own beside it.
struct UserData {
    /// nft's comment type: 0 for tables, chains and rules (`NFTNL_UDATA_*_COMMENT`), 7 for sets.
    static let ruleCommentType: UInt8 = 0
    static let setCommentType: UInt8 = 7
    /// `NFTNL_UDATA_SET_KEYBYTEORDER`: how nft should print a set's keys.
    static let setKeyByteOrderType: UInt8 = 0
    /// `NFTNL_UDATA_SET_DATABYTEORDER`: how nft should print a data map's values.
    static let setDataByteOrderType: UInt8 = 1
    /// `NFTNL_UDATA_SET_ELEM_COMMENT`: an element's comment.
    static let elementCommentType: UInt8 = 0
    /// Rampart's tag. High enough to stay clear of the types nft defines.
    static let tagType: UInt8 = 0xA5
    /// The kernel's limit on userdata (`NFT_USERDATA_MAXLEN`).
    static let maxLength = 256
    /// nft refuses comments longer than this, NUL included (`NFTNL_UDATA_COMMENT_MAXLEN`).
    static let maxCommentLength = 128

    var bytes: [UInt8] = []

    mutating func put(_ type: UInt8, _ value: [UInt8]) {
        bytes += [type, UInt8(value.count)] + value
    }

    mutating func putComment(_ comment: String?, type: UInt8) throws(NetlinkError) {
        guard let comment else { return }
        try Self.check(comment: comment)
        put(type, Array(comment.utf8) + [0])
    }

    /// A comment nft can hold: under `maxCommentLength` bytes (with its NUL), none of them NUL.
    static func check(comment: String) throws(NetlinkError) {
        guard comment.utf8.count < maxCommentLength, !comment.utf8.contains(0) else {
            throw .protocolError("comment is longer than \(maxCommentLength - 1) bytes or contains NUL: \(comment.prefix(40))…")
        }
    }

    mutating func putTag(_ tag: [UInt8]?) throws(NetlinkError) {
        guard let tag else { return }
        guard tag.count <= 64 else { throw .protocolError("tag is longer than 64 bytes") }
        put(Self.tagType, tag)
    }

    /// Builds comment + tag userdata, checking the kernel's size limit.
    static func encode(comment: String?, commentType: UInt8 = ruleCommentType, tag: [UInt8]?,
                       prefix: UserData = UserData()) throws(NetlinkError) -> [UInt8] {
        var u = prefix
        try u.putComment(comment, type: commentType)
        try u.putTag(tag)
        guard u.bytes.count <= maxLength else { throw .protocolError("userdata exceeds \(maxLength) bytes") }
        return u.bytes
    }

    /// Every TLV, in order.
    static func parse(_ bytes: [UInt8]) -> [(type: UInt8, value: [UInt8])] {
        var out: [(UInt8, [UInt8])] = []
        var i = 0
        while i + 2 <= bytes.count {
            let type = bytes[i], len = Int(bytes[i + 1])
            guard i + 2 + len <= bytes.count else { break }
            out.append((type, Array(bytes[(i + 2)..<(i + 2 + len)])))
            i += 2 + len
        }
        return out
    }

    static func decode(_ bytes: [UInt8], commentType: UInt8 = ruleCommentType) -> (comment: String?, tag: [UInt8]?) {
        var comment: String?
        var tag: [UInt8]?
        for (type, value) in parse(bytes) {
            if type == commentType {
                comment = String(decoding: value.prefix { $0 != 0 }, as: UTF8.self)
            } else if type == tagType {
                tag = value
            }
        }
        return (comment, tag)
    }
}
