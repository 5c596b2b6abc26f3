// Package regionapi is the wire protocol of a regional control plane: the
// calls the global control plane makes (apply a regional deployment with a
// generation number, read its status, list machines, drain, join tokens)
// and the calls machine agents make (join, heartbeat, watch assignments,
// report instance state), with a client for both. It imports only api, so
// agents and the global plane can share it without importing each other.
package regionapi

import (
	"time"

	"github.com/meridian-run/meridian/api"
)

// ServiceKey names a service inside a region: "<org>.<app>.<service>".
// Labels hold no dots, so the key is unambiguous.
func ServiceKey(org, app, service string) string { return org + "." + app + "." + service }

// Apply asks a region to run a regional deployment. Generation orders the
// applies of one service: a region keeps the highest it has seen; the same
// generation again changes nothing; a lower one answers 409.
type Apply struct {
	Generation   int64                  `json:"generation"`
	Org          string                 `json:"org"`
	App          string                 `json:"app"`
	Service      string                 `json:"service"`
	DeploymentID string                 `json:"deployment_id"`
	Version      int                    `json:"version"`
	Definition   api.RegionalDefinition `json:"definition"`
	// Secrets holds the values of the secrets the definition names.
	Secrets map[string]string `json:"secrets,omitempty"`
}

// ApplyResult answers an Apply.
type ApplyResult struct {
	Service    string `json:"service"`
	Generation int64  `json:"generation"`
	// Applied is false when this generation was already applied.
	Applied bool `json:"applied"`
}

// Delete asks a region to stop every instance of a service. Like Apply it
// carries a generation; it is idempotent.
type Delete struct {
	Generation int64 `json:"generation"`
}

// Instance states as agents report them.
const (
	StatePending    = "pending"    // assigned, not started yet
	StatePulling    = "pulling"    // its image is being pulled (Message: progress)
	StateStarting   = "starting"   // started, in its grace period
	StateRunning    = "running"    // running; see Healthy
	StateRestarting = "restarting" // exited or failed health, waiting to restart
	StateFailed     = "failed"     // past its restart limit: the region replaces it
	StateStopping   = "stopping"
	StateStopped    = "stopped"
)

// Service phases in a region.
const (
	PhaseProgressing = "progressing" // instances of the wanted deployment are not all healthy yet
	PhaseHealthy     = "healthy"     // the wanted count of the wanted deployment is healthy
	PhaseDeleted     = "deleted"
)

// InstanceStatus is one instance as a region knows it.
type InstanceStatus struct {
	ID           string         `json:"id"`
	Service      string         `json:"service"`
	DeploymentID string         `json:"deployment_id"`
	Version      int            `json:"version"`
	Machine      string         `json:"machine"`
	Datacenter   string         `json:"datacenter"`
	State        string         `json:"state"`
	Healthy      bool           `json:"healthy"`
	Restarts     int            `json:"restarts"`
	Message      string         `json:"message,omitempty"`
	Address      string         `json:"address,omitempty"` // the machine's address
	Ports        map[string]int `json:"ports,omitempty"`   // declared port -> host port
	UpdatedAt    time.Time      `json:"updated_at"`
}

// Pending reports instances the scheduler could not place, and why.
type Pending struct {
	DeploymentID string `json:"deployment_id"`
	Count        int    `json:"count"`
	Reason       string `json:"reason"`
}

// ServiceStatus is a service's state in a region.
type ServiceStatus struct {
	Service      string           `json:"service"`
	Generation   int64            `json:"generation"`
	DeploymentID string           `json:"deployment_id"`
	Version      int              `json:"version"`
	Phase        string           `json:"phase"`
	Wanted       int              `json:"wanted"`
	Healthy      int              `json:"healthy"` // healthy instances of the wanted deployment
	Message      string           `json:"message,omitempty"`
	Instances    []InstanceStatus `json:"instances"`
	Pending      []Pending        `json:"pending,omitempty"`
	// Failures lists the instances of the wanted deployment that failed
	// past their restart limit and were replaced, since it was applied
	// (the region keeps them, so a rollout sees every failure even when
	// the replacement is quick).
	Failures []InstanceStatus `json:"failures,omitempty"`
}

// Machine is a machine of the region with its capacity and usage.
type Machine struct {
	ID           string    `json:"id"`
	Datacenter   string    `json:"datacenter"`
	Address      string    `json:"address"`
	MilliCPU     int       `json:"millicpu"`
	MemoryMB     int       `json:"memory_mb"`
	UsedMilliCPU int       `json:"used_millicpu"`
	UsedMemoryMB int       `json:"used_memory_mb"`
	Instances    int       `json:"instances"`
	Ready        bool      `json:"ready"`
	Draining     bool      `json:"draining"`
	JoinedAt     time.Time `json:"joined_at"`
}

// Datacenter sums a data center's machines.
type Datacenter struct {
	ID           string `json:"id"`
	Machines     int    `json:"machines"`
	Ready        int    `json:"ready"`
	MilliCPU     int    `json:"millicpu"`
	MemoryMB     int    `json:"memory_mb"`
	UsedMilliCPU int    `json:"used_millicpu"`
	UsedMemoryMB int    `json:"used_memory_mb"`
}

// JoinTokenRequest creates a join token for the region.
type JoinTokenRequest struct {
	// TTL is how long the token is valid (default 1h).
	TTL string `json:"ttl,omitempty"`
	// Uses is how many machines may join with it (default 1; 0 = unlimited).
	Uses int `json:"uses"`
}

// JoinToken is a created token. Value is shown once.
type JoinToken struct {
	ID        string    `json:"id"`
	Value     string    `json:"token,omitempty"`
	Region    string    `json:"region"`
	ExpiresAt time.Time `json:"expires_at"`
	Uses      int       `json:"uses"`
	Used      int       `json:"used"`
	Revoked   bool      `json:"revoked"`
}

// JoinRequest is an agent's first call, authenticated by a join token.
type JoinRequest struct {
	Token      string `json:"token"`
	Machine    string `json:"machine"`
	Datacenter string `json:"datacenter"`
	Address    string `json:"address"` // where the machine's instances are reachable
	MilliCPU   int    `json:"millicpu"`
	MemoryMB   int    `json:"memory_mb"`
	CSR        string `json:"csr"` // PEM certificate request for the machine's key
}

// JoinResponse carries the machine's certificate.
type JoinResponse struct {
	Machine     string `json:"machine"`
	Certificate string `json:"certificate"` // PEM chain: leaf, region intermediate
	CA          string `json:"ca"`          // PEM root
	LeaseTTL    string `json:"lease_ttl"`   // heartbeat lease, e.g. "5s"
}

// RenewRequest asks for a fresh machine certificate before the current one
// expires; it is authenticated by the current certificate.
type RenewRequest struct {
	CSR string `json:"csr"`
}

// Heartbeat keeps the machine's lease alive and updates what it offers.
type Heartbeat struct {
	Address  string `json:"address,omitempty"`
	MilliCPU int    `json:"millicpu,omitempty"`
	MemoryMB int    `json:"memory_mb,omitempty"`
	// MeshPort is the machine's node proxy port (mutual TLS), where other
	// machines' proxies deliver calls to its instances.
	MeshPort int `json:"mesh_port,omitempty"`
}

// HeartbeatResponse tells the agent its lease TTL.
type HeartbeatResponse struct {
	LeaseTTL string `json:"lease_ttl"`
	Draining bool   `json:"draining"`
}

// Assignment is an instance the region wants a machine to run, with what it
// needs to run it.
type Assignment struct {
	ID           string                 `json:"id"`
	Service      string                 `json:"service"` // service key
	Org          string                 `json:"org"`
	App          string                 `json:"app"`
	ServiceName  string                 `json:"service_name"`
	DeploymentID string                 `json:"deployment_id"`
	Version      int                    `json:"version"`
	Definition   api.RegionalDefinition `json:"definition"`
	Secrets      map[string]string      `json:"secrets,omitempty"`
}

// Watch event types.
const (
	EventSnapshot = "snapshot" // the machine's whole assignment set
	EventPut      = "put"      // an assignment added or changed
	EventDelete   = "delete"   // an assignment removed: stop the instance
)

// WatchEvent is one line of the assignment watch stream (NDJSON). Revision
// is the region store's revision; a watch resumed with after=Revision
// continues from there, or starts with a snapshot when that is too old.
type WatchEvent struct {
	Type        string       `json:"type"`
	Revision    int64        `json:"revision"`
	Assignments []Assignment `json:"assignments,omitempty"`
	Assignment  *Assignment  `json:"assignment,omitempty"`
	ID          string       `json:"id,omitempty"`
}

// InstanceReport is an agent's report of one instance.
type InstanceReport struct {
	ID       string         `json:"id"`
	State    string         `json:"state"`
	Healthy  bool           `json:"healthy"`
	Restarts int            `json:"restarts"`
	Message  string         `json:"message,omitempty"`
	Ports    map[string]int `json:"ports,omitempty"`
}

// StatusReport carries an agent's instance reports.
type StatusReport struct {
	Instances []InstanceReport `json:"instances"`
}

// Feed is a region's endpoint feed: every service with its ports, routes
// and endpoints (instances with where they are reachable and whether they
// are healthy). Edges and other regions read a region's own feed (Local);
// a region's agents read the merged feed of their region and its peers,
// for the mesh.
type Feed struct {
	Region   string        `json:"region"`
	Revision int64         `json:"revision"`
	Services []FeedService `json:"services"`
	// Peers holds, in a merged feed, each peer region's last feed and when
	// it last changed.
	Peers []PeerFeed `json:"peers,omitempty"`
	// Self is, in a merged feed, the region itself as global registered
	// it (its coordinates rank peers before their round trips are
	// measured); nil until global has told the region its peers.
	Self *Peer `json:"self,omitempty"`
}

// PeerFeed is another region's feed as a region last received it.
// Received is when its content (or Connected) last changed.
type PeerFeed struct {
	Region    string    `json:"region"`
	Latitude  float64   `json:"latitude"`
	Longitude float64   `json:"longitude"`
	Received  time.Time `json:"received"`
	// Connected is false while the peer's feed is gone; its endpoints stay
	// listed (stale) and are used while they answer.
	Connected bool          `json:"connected"`
	Services  []FeedService `json:"services"`
}

// FeedService is one service of a feed.
type FeedService struct {
	Key          string      `json:"key"` // org.app.service
	Org          string      `json:"org"`
	App          string      `json:"app"`
	Service      string      `json:"service"`
	DeploymentID string      `json:"deployment_id"`
	Version      int         `json:"version"`
	Type         string      `json:"type"`
	Ports        []api.Port  `json:"ports"`
	Routes       []api.Route `json:"routes"`
	Endpoints    []Endpoint  `json:"endpoints"`
}

// Endpoint is one instance of a service as the feed reports it.
type Endpoint struct {
	Instance     string         `json:"instance"`
	DeploymentID string         `json:"deployment_id"`
	Datacenter   string         `json:"datacenter"`
	Machine      string         `json:"machine"`
	Address      string         `json:"address"`             // the machine's address
	Ports        map[string]int `json:"ports"`               // declared port -> host port
	MeshPort     int            `json:"mesh_port,omitempty"` // the machine's node proxy (mutual TLS)
	Healthy      bool           `json:"healthy"`
}

// Peer is another region a region exchanges feeds with.
type Peer struct {
	ID        string  `json:"id"`
	URL       string  `json:"url"`
	Latitude  float64 `json:"latitude"`
	Longitude float64 `json:"longitude"`
}

// Peers is the body of PUT /v1/peers: the other open regions, sent by the
// global control plane and cached by the region, so feeds keep flowing
// while global is down.
type Peers struct {
	Self  Peer   `json:"self"`
	Peers []Peer `json:"peers"`
}
