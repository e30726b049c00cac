//! The `bandwidth` capability: traffic shaping on the node's end of a pod's veth, where the pod
//! cannot undo it, as the reference `bandwidth` plugin does:
//!
//! - ingress (to the pod): a `tbf` qdisc at the root of the host veth (its egress);
//! - egress (from the pod): the host veth's ingress is redirected (an `ingress` qdisc, a u32
//!   match-all filter with a `mirred` egress redirect) to an `ifb` device of its own, whose root
//!   is a `tbf` qdisc.
//!
//! Rates are bits per second and bursts bits (CNI's units); the queue holds 25 ms at the rate
//! plus the burst. Everything is sent over netlink in the ADD's node batch; the ifb device is
//! deleted with the attachment.

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::InfoKind;
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use node_core::{Bandwidth, CniError};
use rtnetlink::packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

use crate::nlbatch::Request;

/// How long a packet may wait in the queue at the configured rate (the reference's 25 ms).
const LATENCY_MS: u64 = 25;
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TC_LINKLAYER_ETHERNET: u8 = 1;
const ETH_P_ALL: u16 = 0x0003;

/// One direction's shaping, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    /// Bytes per second.
    pub rate: u64,
    /// Bytes.
    pub burst: u32,
}

/// The ingress and egress limits of `b` (`None` where not shaped); a clear error for a rate
/// without a burst (or the reverse), or a burst too large.
pub(crate) fn limits(b: &Bandwidth) -> Result<(Option<Limit>, Option<Limit>), CniError> {
    let one = |dir: &str, rate: u64, burst: u64| -> Result<Option<Limit>, CniError> {
        let bad = |m: String| CniError::Config {
            origin: "runtimeConfig.bandwidth".into(),
            message: m,
        };
        match (rate, burst) {
            (0, 0) => Ok(None),
            (0, _) | (_, 0) => Err(bad(format!(
                "{dir}Rate and {dir}Burst must be set together (got {rate} and {burst})"
            ))),
            (r, b) if r < 8 || b < 8 => Err(bad(format!(
                "{dir}Rate {r} bit/s or {dir}Burst {b} bit is below one byte"
            ))),
            (r, b) => Ok(Some(Limit {
                rate: r / 8,
                burst: u32::try_from(b / 8)
                    .map_err(|_| bad(format!("{dir}Burst {b} bit is too large")))?,
            })),
        }
    };
    Ok((
        one("ingress", b.ingress_rate, b.ingress_burst)?,
        one("egress", b.egress_rate, b.egress_burst)?,
    ))
}

/// The ifb device that shapes a pod's egress: `nkb` + the host veth's 12 hex digits.
pub(crate) fn ifb_name(host: &str) -> String {
    format!("nkb{}", host.trim_start_matches("nkv"))
}

/// Create the ifb device, up.
pub(crate) fn add_ifb(name: &str) -> Request {
    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Ifb)
        .name(name.to_string())
        .up()
        .build();
    Request::new(
        format!("create ifb device {name}"),
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// A `tbf` root qdisc on link `index` (`dev` names it in errors).
pub(crate) fn tbf(dev: &str, index: u32, l: Limit) -> Request {
    // struct tc_tbf_qopt: rate and peakrate (struct tc_ratespec, 12 bytes each), limit, buffer,
    // mtu. An Ethernet link layer needs no rate table; the burst (TCA_TBF_BURST) sets the
    // bucket and the 64-bit rate (TCA_TBF_RATE64) any rate.
    let limit = l.rate.saturating_mul(LATENCY_MS) / 1000 + u64::from(l.burst);
    let mut qopt = vec![0u8; 36];
    qopt[1] = TC_LINKLAYER_ETHERNET;
    qopt[8..12].copy_from_slice(&u32::try_from(l.rate).unwrap_or(u32::MAX).to_ne_bytes());
    qopt[24..28].copy_from_slice(&u32::try_from(limit).unwrap_or(u32::MAX).to_ne_bytes());
    let mut m = TcMessage::with_index(index as i32);
    m.header.handle = TcHandle { major: 1, minor: 0 };
    m.header.parent = TcHandle::ROOT;
    m.attributes = vec![
        TcAttribute::Kind("tbf".into()),
        TcAttribute::Options(vec![
            TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, qopt)),
            TcOption::Other(DefaultNla::new(
                TCA_TBF_RATE64,
                l.rate.to_ne_bytes().to_vec(),
            )),
            TcOption::Other(DefaultNla::new(
                TCA_TBF_BURST,
                l.burst.to_ne_bytes().to_vec(),
            )),
        ]),
    ];
    Request::new(
        format!("add tbf qdisc to {dev}"),
        RouteNetlinkMessage::NewQueueDiscipline(m),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// The ingress qdisc of link `index`.
pub(crate) fn ingress_qdisc(dev: &str, index: u32) -> Request {
    let mut m = TcMessage::with_index(index as i32);
    m.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    m.header.parent = TcHandle::INGRESS;
    m.attributes = vec![TcAttribute::Kind("ingress".into())];
    Request::new(
        format!("add ingress qdisc to {dev}"),
        RouteNetlinkMessage::NewQueueDiscipline(m),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Redirect everything arriving on link `index` to the egress of link `to`.
pub(crate) fn redirect(dev: &str, index: u32, to_name: &str, to: u32) -> Request {
    let mut m = TcMessage::with_index(index as i32);
    m.header.parent = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    // priority 1, protocol ETH_P_ALL (network order)
    m.header.info = (1u32 << 16) | u32::from(ETH_P_ALL.to_be());
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![TcU32Key::default()];
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    m.attributes = vec![
        TcAttribute::Kind(TcFilterU32::KIND.into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(sel)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    Request::new(
        format!("redirect the ingress of {dev} to {to_name}"),
        RouteNetlinkMessage::NewTrafficFilter(m),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_bytes_and_need_rate_and_burst_together() {
        let b = Bandwidth {
            ingress_rate: 8_000_000,
            ingress_burst: 800_000,
            egress_rate: 0,
            egress_burst: 0,
        };
        assert_eq!(
            limits(&b).unwrap(),
            (
                Some(Limit {
                    rate: 1_000_000,
                    burst: 100_000
                }),
                None
            )
        );
        let e = limits(&Bandwidth {
            egress_rate: 1000,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("bandwidth") && e.contains("egressBurst"), "{e}");
        assert_eq!(ifb_name("nkv0123456789ab"), "nkb0123456789ab");
    }
}
