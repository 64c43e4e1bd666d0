// CNetfilter: the C shim between Swift and libnftnl/libmnl.
//
// Swift imports libnftnl's and libmnl's functions and named enums directly; this header only adds
// what does not import: function-like macros, the batch-begin message with a generation id (which
// libnftnl has no builder for), and parsing of netlink error messages with extended acks (which
// needs libmnl's attribute callbacks). Every symbol here is prefixed `rampart_`.
#ifndef RAMPART_CNETFILTER_H
#define RAMPART_CNETFILTER_H

// Order matters: <sys/socket.h> and <netinet/in.h> before any linux/ or libnftnl/ header,
// or Clang's modules see two definitions of in_addr.
#include <sys/socket.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include <linux/netlink.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>
// ctnetlink's message types and attribute numbers (conntrack dump and delete, Conntrack.swift).
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netfilter/nf_conntrack_common.h>

#include <libmnl/libmnl.h>
#include <libnftnl/common.h>
#include <libnftnl/batch.h>
#include <libnftnl/table.h>
#include <libnftnl/chain.h>
#include <libnftnl/rule.h>
#include <libnftnl/expr.h>
#include <libnftnl/set.h>
#include <libnftnl/gen.h>
#include <libnftnl/udata.h>

/// NFT_TABLE_F_PERSIST (Linux 6.9): keep an owner-flagged table when its owner's socket closes.
/// Debian 12's kernel headers predate it, so it is spelled out here.
#define RAMPART_NFT_TABLE_F_PERSIST 0x4

/// MNL_ALIGN is a macro: netlink messages are padded to 4 bytes.
static inline uint32_t rampart_nlmsg_align(uint32_t len) { return MNL_ALIGN(len); }

/// NFNL_MSG_TYPE is a macro: the netlink message type of an nf_tables message.
static inline uint16_t rampart_nft_msg_type(uint16_t msg) {
    return (uint16_t)((NFNL_SUBSYS_NFTABLES << 8) | msg);
}

/// Builds the NFNL_MSG_BATCH_BEGIN message at `buf`. libnftnl's nftnl_batch_begin cannot carry
/// NFNL_BATCH_GENID; with `with_genid` the kernel rejects the whole batch with ERESTART if the
/// ruleset generation is no longer `genid` (optimistic concurrency).
struct nlmsghdr *rampart_batch_begin(char *buf, uint32_t seq, bool with_genid, uint32_t genid);

/// What an NLMSG_ERROR message says: the errno (0 for an ack), the sequence number of the
/// message it answers, and with NETLINK_EXT_ACK the kernel's text and the byte offset of the
/// offending attribute inside the original message (when the kernel gave them).
struct rampart_nlerr {
    int error;              ///< positive errno, or 0 for an ack
    uint32_t seq;           ///< the answered message's sequence number
    uint16_t type;          ///< the answered message's type
    const char *message;    ///< NLMSGERR_ATTR_MSG, or NULL (points into the received buffer)
    uint32_t offset;        ///< NLMSGERR_ATTR_OFFS, valid if has_offset
    bool has_offset;
};

/// Parses an NLMSG_ERROR message (the TLVs after it need libmnl's attribute iteration, whose
/// loop is a macro). Returns false if the message is truncated.
bool rampart_parse_nlerr(const struct nlmsghdr *nlh, struct rampart_nlerr *out);

#endif
