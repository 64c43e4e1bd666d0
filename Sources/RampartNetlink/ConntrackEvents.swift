#if canImport(Glibc)
import RampartSystem
import Glibc
#endif
import CNetfilter

// ctnetlink events: the kernel multicasts a message for every conntrack entry confirmed
// (NFNLGRP_CONNTRACK_NEW) and destroyed (NFNLGRP_CONNTRACK_DESTROY) in the socket's network
// namespace. The messages carry the same attributes as a dump entry, so ConntrackMessages'
// parser reads them. Used by RampartConntrack's ConntrackIndex.

/// One conntrack event.
public struct ConntrackEvent: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        /// An entry was confirmed (its first packet passed every hook) or created over ctnetlink;
        /// its reply tuple is final (NAT is set up before confirmation).
        case new
        /// An entry changed (status, protocol state): only with `.update` subscribed.
        case update
        /// An entry was removed (expired, deleted, flushed).
        case destroy
    }
    public var kind: Kind
    public var entry: ConntrackEntry
    public init(_ kind: Kind, _ entry: ConntrackEntry) { self.kind = kind; self.entry = entry }
}

/// What one `ConntrackEvents.receive` got.
public enum ConntrackEventReceive: Hashable, Sendable {
    /// A datagram came; this many events in it were passed on.
    case events(Int)
    /// Nothing was queued (or the wait timed out).
    case nothing
    /// The socket's receive queue overflowed (ENOBUFS): the kernel dropped events for this
    /// socket, which ones is unknown. Whatever was built from the events is no longer exact; the
    /// events still queued (and every later one) are intact and come next.
    case eventsLost
}

/// A `NETLINK_NETFILTER` socket in one network namespace joined to the conntrack event groups.
///
/// Not Sendable: one reader (ConntrackIndex serialises its use behind its lock).
public final class ConntrackEvents {
    /// Which event groups to join.
    public struct Groups: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let new = Groups(rawValue: 1)
        public static let update = Groups(rawValue: 2)
        public static let destroy = Groups(rawValue: 4)
    }

    private let channel: NetlinkChannel
    private let fd: Int32?
    private var joined: [UInt32] = []
    public let namespace: NetworkNamespace

    /// Subscribes in `namespace` (the socket is opened inside it, so only its entries are seen).
    /// `receiveBuffer` is forced with SO_RCVBUFFORCE (root): the kernel queue that absorbs a burst
    /// of events while the reader is busy; when it overflows, `receive` says `.eventsLost`.
    public convenience init(namespace: NetworkNamespace = .current, groups: Groups = [.new, .destroy],
                            receiveBuffer: Int = 32 << 20) throws(NetlinkError) {
        let socket = try NetlinkSocket(namespace: namespace)
        try socket.setReceiveBufferForTesting(Int32(clamping: receiveBuffer))
        for (flag, group) in [(Groups.new, NFNLGRP_CONNTRACK_NEW), (.update, NFNLGRP_CONNTRACK_UPDATE), (.destroy, NFNLGRP_CONNTRACK_DESTROY)]
        where groups.contains(flag) {
            var g = Int32(group.rawValue)
            _ = try syscall("setsockopt(NETLINK_ADD_MEMBERSHIP \(group.rawValue))") {
                setsockopt(socket.fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, socklen_t(MemoryLayout<Int32>.size))
            }
        }
        self.init(transport: socket, fd: socket.fd, namespace: namespace)
        joined = [(Groups.new, NFNLGRP_CONNTRACK_NEW), (.update, NFNLGRP_CONNTRACK_UPDATE), (.destroy, NFNLGRP_CONNTRACK_DESTROY)]
            .filter { groups.contains($0.0) }.map { $0.1.rawValue }
    }

    /// Leaves the event groups: the kernel stops queueing events for this socket (what is
    /// queued stays). Nothing to do without a socket.
    public func unsubscribe() {
        guard let fd else { return }
        for group in joined {
            var g = Int32(group)
            setsockopt(fd, SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, &g, socklen_t(MemoryLayout<Int32>.size))
        }
        joined = []
    }

    /// Leaves the DESTROY group for a while (`rejoinDestroy` ends it): while nobody on the host
    /// listens to it (the kernel keeps one listener bit per group for all namespaces), the
    /// kernel builds no DESTROY event, ~2 µs of every conntrack delete here. False (nothing
    /// done) without a socket or when not joined to it.
    public func leaveDestroy() -> Bool {
        guard let fd, joined.contains(NFNLGRP_CONNTRACK_DESTROY.rawValue) else { return false }
        var g = Int32(NFNLGRP_CONNTRACK_DESTROY.rawValue)
        guard setsockopt(fd, SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, &g, socklen_t(MemoryLayout<Int32>.size)) == 0 else { return false }
        joined.removeAll { $0 == NFNLGRP_CONNTRACK_DESTROY.rawValue }
        return true
    }

    /// Joins the DESTROY group again after `leaveDestroy`.
    public func rejoinDestroy() throws(NetlinkError) {
        guard let fd, !joined.contains(NFNLGRP_CONNTRACK_DESTROY.rawValue) else { return }
        var g = Int32(NFNLGRP_CONNTRACK_DESTROY.rawValue)
        _ = try syscall("setsockopt(NETLINK_ADD_MEMBERSHIP \(g))") {
            setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, socklen_t(MemoryLayout<Int32>.size))
        }
        joined.append(NFNLGRP_CONNTRACK_DESTROY.rawValue)
    }

    /// Events from any transport: a scripted one in tests (`fd` nil: `wait` does not poll).
    package init(transport: any NetlinkTransport, fd: Int32? = nil, namespace: NetworkNamespace = .current) {
        channel = NetlinkChannel(transport)
        self.fd = fd
        self.namespace = namespace
    }

    /// Waits until an event is queued or `milliseconds` passed; true if one may be queued.
    /// Without a socket (a scripted transport) it returns true at once.
    public func wait(milliseconds: Int32) -> Bool {
        guard let fd else { return true }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, milliseconds) > 0
    }

    /// Receives one datagram (without blocking unless `wait`) and passes each conntrack event in
    /// it to `body`. ENOBUFS is `.eventsLost`, never silent; EINTR is retried; messages that are
    /// not conntrack entries (expectations, errors) are skipped.
    public func receive(wait: Bool = false, _ body: (ConntrackEvent) throws(NetlinkError) -> Void) throws(NetlinkError) -> ConntrackEventReceive {
        var count = 0
        let got: Bool
        do {
            got = try channel.receive(wait: wait) { (nlh) throws(NetlinkError) in
                let type = nlh.pointee.nlmsg_type
                guard type >> 8 == UInt16(NFNL_SUBSYS_CTNETLINK) else { return }
                let kind: ConntrackEvent.Kind
                switch UInt32(type & 0xff) {
                case IPCTNL_MSG_CT_NEW.rawValue:
                    // NEW and UPDATE share the message type; a new entry's event has CREATE|EXCL.
                    let create = UInt16(NLM_F_CREATE | NLM_F_EXCL)
                    kind = nlh.pointee.nlmsg_flags & create == create ? .new : .update
                case IPCTNL_MSG_CT_DELETE.rawValue: kind = .destroy
                default: return
                }
                let raw = UnsafeRawBufferPointer(start: UnsafeRawPointer(nlh), count: Int(nlh.pointee.nlmsg_len))
                guard let entry = try ConntrackMessages.parseEntry(message: raw) else { return }
                count += 1
                try body(ConntrackEvent(kind, entry))
            }
        } catch {
            if case .systemCall(_, let e) = error, e == .ENOBUFS { return .eventsLost }
            throw error
        }
        return got ? .events(count) : .nothing
    }

    /// Receives without blocking until nothing is queued. Returns the events passed on, or
    /// `.eventsLost` as soon as an overflow is seen (the rest stays queued).
    public func drain(_ body: (ConntrackEvent) throws(NetlinkError) -> Void) throws(NetlinkError) -> ConntrackEventReceive {
        var total = 0
        while true {
            switch try receive(wait: false, body) {
            case .events(let n): total += n
            case .nothing: return .events(total)
            case .eventsLost: return .eventsLost
            }
        }
    }
}
