package block

import (
	"testing"

	"github.com/onsi/ginkgo/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/sanity"
)

var _ = ginkgo.ReportAfterSuite("every skip has a reason", sanity.CheckSkips)

// TestSanityBlock runs csi-sanity with raw block volumes on real loop disks.
func TestSanityBlock(t *testing.T) { sanity.Run(t, "block") }
