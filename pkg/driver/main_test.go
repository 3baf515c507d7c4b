package driver

import (
	"os"
	"testing"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

func TestMain(m *testing.M) {
	testOutput()
	os.Exit(m.Run())
}

// testOutput restores the test binary's log destination.
func testOutput() { testutil.QuietLogs("driver") }
