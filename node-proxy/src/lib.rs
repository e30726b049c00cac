//! The service proxy as a library: `Service` + `EndpointSlice` tracking into node-core's
//! `ProxyState`, and the `ServiceRouter` implementations (nftables, iptables, IPVS).
