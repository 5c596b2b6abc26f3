// Command meshagent is the process bench/mesh measures: a Meridian
// machine agent with its mesh (role "agent"), which is also its
// instances' tiny HTTP workload (role "workload"). It links the agent and
// its driver only, none of the region's code.
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
	fmt.Fprintf(os.Stderr, "meshagent: set %s to agent or workload\n", benchproc.RoleEnv)
	os.Exit(2)
}
