// Command agentproc is the process agentrss measures: a Meridian machine
// agent (role "agent"), which is also its instances' shim and their tiny
// HTTP workload (role "workload"). It links the agent and its driver only,
// none of the region's code.
package main

import (
	"fmt"
	"os"

	"github.com/meridian-run/meridian/bench/benchproc"
	"github.com/meridian-run/meridian/driver"
)

func main() {
	driver.MaybeRunShim()
	benchproc.Maybe()
	fmt.Fprintf(os.Stderr, "agentproc: set %s to agent or workload\n", benchproc.RoleEnv)
	os.Exit(2)
}
