package mounter

import (
	"os"
	"testing"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

func TestMain(m *testing.M) {
	testutil.QuietLogs("mounter")
	os.Exit(m.Run())
}
