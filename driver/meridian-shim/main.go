// Command meridian-shim is the Process driver's instance shim as a small
// binary of its own. The driver's default shim is the agent binary itself
// (/proc/self/exe), which carries the agent's whole package initialisation
// into every instance; pointing ProcessConfig.ShimPath at this binary keeps
// the per-instance overhead to the shim alone.
package main

import (
	"fmt"
	"os"

	"github.com/meridian-run/meridian/driver"
)

func main() {
	driver.MaybeRunShim()
	fmt.Fprintln(os.Stderr, "meridian-shim: only the Meridian process driver starts this program")
	os.Exit(2)
}
