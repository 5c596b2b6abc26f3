package region

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/meridian-run/meridian/api"
)

// The region's etcd layout, under /meridian/<region>/:
//
//	svc/<service key>          serviceRecord: desired state of a service (generation, deployment, count)
//	spec/<deployment id>       specRecord: the regional definition and secrets of one deployment
//	assign/<machine>/<id>      assignRecord: an instance placed on a machine (written by the scheduler)
//	status/<id>                statusRecord: the instance's state as its agent reports it
//	machines/<id>              machineRecord: a machine that joined
//	alive/<id>                 bound to the machine's lease: present while it heartbeats
//	tokens/<id>                tokenRecord: a join token (hash, expiry, uses, revoked)
//	failed/<service>/<id>      regionapi.InstanceStatus of an instance replaced past its restart limit, kept until the next apply
//	pending                    the leader's last unplaced demand, with reasons
//	peers                      regionapi.Peers: the other open regions, as global last sent them
//	leader/                    the scheduler's election
type keys struct{ root string }

func newKeys(region string) keys { return keys{root: "/meridian/" + region + "/"} }

func (k keys) svcPrefix() string               { return k.root + "svc/" }
func (k keys) svc(key string) string           { return k.root + "svc/" + key }
func (k keys) spec(dep string) string          { return k.root + "spec/" + dep }
func (k keys) assignPrefix() string            { return k.root + "assign/" }
func (k keys) assignMachine(m string) string   { return k.root + "assign/" + m + "/" }
func (k keys) assign(m, id string) string      { return k.root + "assign/" + m + "/" + id }
func (k keys) statusPrefix() string            { return k.root + "status/" }
func (k keys) status(id string) string         { return k.root + "status/" + id }
func (k keys) machinePrefix() string           { return k.root + "machines/" }
func (k keys) machine(id string) string        { return k.root + "machines/" + id }
func (k keys) alivePrefix() string             { return k.root + "alive/" }
func (k keys) alive(id string) string          { return k.root + "alive/" + id }
func (k keys) token(id string) string          { return k.root + "tokens/" + id }
func (k keys) failedPrefix() string            { return k.root + "failed/" }
func (k keys) failedSvc(svc string) string     { return k.root + "failed/" + svc + "/" }
func (k keys) failed(svc, id string) string    { return k.root + "failed/" + svc + "/" + id }
func (k keys) peers() string                   { return k.root + "peers" }
func (k keys) pending() string                 { return k.root + "pending" }
func (k keys) leader() string                  { return k.root + "leader" }
func (k keys) last(full, prefix string) string { return strings.TrimPrefix(full, prefix) }

// serviceRecord is a service's desired state in the region.
type serviceRecord struct {
	Key          string    `json:"key"`
	Org          string    `json:"org"`
	App          string    `json:"app"`
	Service      string    `json:"service"`
	Generation   int64     `json:"generation"`
	DeploymentID string    `json:"deployment_id"`
	Version      int       `json:"version"`
	Count        int       `json:"count"`
	MilliCPU     int       `json:"millicpu"`
	MemoryMB     int       `json:"memory_mb"`
	Datacenters  []string  `json:"datacenters,omitempty"`
	Deleted      bool      `json:"deleted,omitempty"`
	UpdatedAt    time.Time `json:"updated_at"`
}

// specRecord is one deployment's regional definition. Deployments are
// immutable, so a spec never changes once written.
type specRecord struct {
	Org          string                 `json:"org"`
	App          string                 `json:"app"`
	Service      string                 `json:"service"`
	DeploymentID string                 `json:"deployment_id"`
	Version      int                    `json:"version"`
	Definition   api.RegionalDefinition `json:"definition"`
	// Secrets holds the secret values, sealed (see sealer).
	Secrets map[string][]byte `json:"sealed_secrets,omitempty"`
}

// assignRecord is an instance placed on a machine. State is "pending"
// while live, "lost" once replaced because its machine was lost (kept so
// the machine, if it returns, stops it).
type assignRecord struct {
	ID           string    `json:"id"`
	Service      string    `json:"service"`
	DeploymentID string    `json:"deployment_id"`
	Version      int       `json:"version"`
	Machine      string    `json:"machine"`
	Datacenter   string    `json:"datacenter"`
	MilliCPU     int       `json:"millicpu"`
	MemoryMB     int       `json:"memory_mb"`
	State        string    `json:"state"`
	CreatedAt    time.Time `json:"created_at"`
}

// statusRecord is an instance's state as its agent last reported it.
type statusRecord struct {
	State     string         `json:"state"`
	Healthy   bool           `json:"healthy"`
	Restarts  int            `json:"restarts"`
	Message   string         `json:"message,omitempty"`
	Ports     map[string]int `json:"ports,omitempty"`
	UpdatedAt time.Time      `json:"updated_at"`
}

// machineRecord is a machine that joined the region. KeySHA256 and
// CertNotAfter describe the certificate the region last issued to it (at
// its join or latest renewal): while that certificate is valid the
// machine is live, and a join under its name must prove the same key.
type machineRecord struct {
	ID           string    `json:"id"`
	Datacenter   string    `json:"datacenter"`
	Address      string    `json:"address"`
	MilliCPU     int       `json:"millicpu"`
	MemoryMB     int       `json:"memory_mb"`
	Draining     bool      `json:"draining,omitempty"`
	MeshPort     int       `json:"mesh_port,omitempty"`
	JoinedAt     time.Time `json:"joined_at"`
	KeySHA256    []byte    `json:"key_sha256,omitempty"`
	CertNotAfter time.Time `json:"cert_not_after,omitzero"`
}

// certValidUntil is when the machine's latest certificate expires. A
// record written before keys were recorded has the one of its join.
func (m machineRecord) certValidUntil() time.Time {
	if m.CertNotAfter.IsZero() {
		return m.JoinedAt.Add(machineCertTTL)
	}
	return m.CertNotAfter
}

// tokenRecord is a join token; only its hash is kept.
type tokenRecord struct {
	ID        string    `json:"id"`
	Hash      []byte    `json:"hash"`
	ExpiresAt time.Time `json:"expires_at"`
	Uses      int       `json:"uses"` // 0 = unlimited
	Used      int       `json:"used"`
	Revoked   bool      `json:"revoked,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // records always marshal
	}
	return string(b)
}
