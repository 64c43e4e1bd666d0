// Implementations of the shims declared in CNetfilter.h; see there for why each exists.
#define _GNU_SOURCE
#include "CNetfilter.h"
#include <string.h>

struct nlmsghdr *rampart_batch_begin(char *buf, uint32_t seq, bool with_genid, uint32_t genid) {
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = NFNL_MSG_BATCH_BEGIN;
    nlh->nlmsg_flags = NLM_F_REQUEST;
    nlh->nlmsg_seq = seq;
    struct nfgenmsg *nfg = mnl_nlmsg_put_extra_header(nlh, sizeof(*nfg));
    nfg->nfgen_family = AF_UNSPEC;
    nfg->version = NFNETLINK_V0;
    nfg->res_id = htons(NFNL_SUBSYS_NFTABLES);
    if (with_genid)
        mnl_attr_put_u32(nlh, NFNL_BATCH_GENID, htonl(genid));
    return nlh;
}

bool rampart_parse_nlerr(const struct nlmsghdr *nlh, struct rampart_nlerr *out) {
    memset(out, 0, sizeof(*out));
    if (nlh->nlmsg_len < mnl_nlmsg_size(sizeof(struct nlmsgerr)))
        return false;
    const struct nlmsgerr *err = mnl_nlmsg_get_payload(nlh);
    out->error = -err->error;
    out->seq = err->msg.nlmsg_seq;
    out->type = err->msg.nlmsg_type;
    if (!(nlh->nlmsg_flags & NLM_F_ACK_TLVS))
        return true;
    // With NETLINK_CAP_ACK the original message is not echoed, so the TLVs follow the
    // original header; without it they follow the whole original message.
    unsigned int offset = sizeof(*err);
    if (!(nlh->nlmsg_flags & NLM_F_CAPPED))
        offset += err->msg.nlmsg_len - sizeof(struct nlmsghdr);
    if (mnl_nlmsg_size(offset) > nlh->nlmsg_len)
        return true;
    const struct nlattr *attr;
    mnl_attr_for_each(attr, nlh, offset) {
        switch (mnl_attr_get_type(attr)) {
        case NLMSGERR_ATTR_MSG:
            if (mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) >= 0)
                out->message = mnl_attr_get_str(attr);
            break;
        case NLMSGERR_ATTR_OFFS:
            if (mnl_attr_validate(attr, MNL_TYPE_U32) >= 0) {
                out->offset = mnl_attr_get_u32(attr);
                out->has_offset = true;
            }
            break;
        default:
            break;
        }
    }
    return true;
}
