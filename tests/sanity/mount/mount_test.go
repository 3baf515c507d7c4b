package mount

import (
	"testing"

	"github.com/onsi/ginkgo/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/sanity"
)

var _ = ginkgo.ReportAfterSuite("every skip has a reason", sanity.CheckSkips)

// TestSanityMount runs csi-sanity with filesystem volumes on real loop disks.
func TestSanityMount(t *testing.T) { sanity.Run(t, "mount") }
