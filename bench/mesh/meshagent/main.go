// Command meshagent is the process bench/mesh measures: a Meridian
// machine agent with its mesh (role "agent"), which is also its
// instances' tiny HTTP workload (role "workload"). It links the agent and
// its driver only, none of the region's code.
package main

import (
	"fmt"
	"os"

	"github.com/meridian-run/meridian/bench/mesh/meshproc"
	"github.com/meridian-run/meridian/driver"
)

func main() {
	driver.MaybeRunShim()
	meshproc.Maybe()
	fmt.Fprintf(os.Stderr, "meshagent: set %s to agent or workload\n", meshproc.RoleEnv)
	os.Exit(2)
}
