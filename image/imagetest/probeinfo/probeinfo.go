// Package probeinfo is what the test program image/imagetest/probe prints
// in its "info" mode, for the tests that read it.
package probeinfo

// Info is what the probe sees of its world.
type Info struct {
	Args     []string          `json:"args"`
	Env      []string          `json:"env"`
	Cwd      string            `json:"cwd"`
	UID      int               `json:"uid"`
	GID      int               `json:"gid"`
	Groups   []int             `json:"groups"`
	Pid      int               `json:"pid"`
	Hostname string            `json:"hostname"`
	Status   map[string]string `json:"status"` // Cap* and NoNewPrivs of /proc/self/status
	Files    map[string]string `json:"files"`  // content, or "error: ..."
}
