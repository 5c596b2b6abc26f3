// Package pki is Meridian's trust: one root CA per installation (trust
// domain, e.g. "meridian.local"), an intermediate CA per region, and leaf
// certificates carrying SPIFFE-style URI identities for region servers,
// agents (machines), the global control plane, edges and workloads.
//
// Identities (see ID and ParseID):
//
//	spiffe://<td>/global
//	spiffe://<td>/region/<region>/server
//	spiffe://<td>/region/<region>/machine/<machine>
//	spiffe://<td>/edge/<location>
//	spiffe://<td>/org/<org>/app/<app>/service/<service>
//
// Issuing policy: the root issues region intermediates and the global and
// edge identities; a region's intermediate issues that region's server and
// machine identities and workload identities. Both CA levels carry name
// constraints limiting URI SANs to the trust domain, and the intermediate
// has path length 0.
//
// ServerConfig and ClientConfig build TLS 1.3 mutual-TLS configurations
// that verify the peer's chain, refuse a certificate whose issuing CA may
// not issue its identity under that policy (another region's intermediate
// signing this region's server ID, an intermediate signing a global ID:
// what a stolen CA key could mint), and then hand its identity to an
// Authorizer (AllowRegion, RequireIssuer, RegionMembers, AllOf, ...).
// A Reloader serves the current certificate to those configurations and
// can be rotated, or renewed in the background with Reloader.Renew,
// without restarting listeners. All keys are ECDSA P-256; all time comes
// from the caller (LeafRequest.Now, a Clock, tls.Config.Time).
package pki
