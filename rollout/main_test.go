package rollout

import (
	"os"
	"testing"

	"github.com/meridian-run/meridian/testutil"
)

// TestMain fails the package if the engine's Close left goroutines
// running.
func TestMain(m *testing.M) { os.Exit(testutil.Main(m, nil)) }
