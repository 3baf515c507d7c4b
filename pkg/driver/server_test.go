package driver

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
)

// TestServerLogsEveryCallWithoutSecrets drives the real gRPC server over a
// unix socket and reads klog's output: every call is logged with its method,
// and secrets never appear.
func TestServerLogsEveryCallWithoutSecrets(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	var buf bytes.Buffer
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.Set("v", "4")
	klog.SetOutputBySeverity("INFO", &buf)
	t.Cleanup(func() { fs.Set("v", "0"); testOutput() })

	sock := filepath.Join(t.TempDir(), "csi.sock")
	lis, err := Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v %v, want 0600", fi.Mode(), err)
	}
	srv := f.d.NewServer()
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctl := csi.NewControllerClient(conn)
	secret := "s3cr3t-value-never-logged"
	_, err = ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-secret",
		VolumeCapabilities: []*csi.VolumeCapability{testutil.MountCap("")}, Secrets: map[string]string{"token": secret}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "", Secrets: map[string]string{"token": secret}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("want InvalidArgument, got %v", err)
	}
	if _, err := csi.NewIdentityClient(conn).Probe(context.Background(), &csi.ProbeRequest{}); err != nil {
		t.Fatal(err)
	}
	klog.Flush()
	out := buf.String()
	if strings.Contains(out, secret) {
		t.Fatalf("secret in logs:\n%s", out)
	}
	for _, want := range []string{`"GRPC done" method="/csi.v1.Controller/CreateVolume"`, `"GRPC failed"`,
		`method="/csi.v1.Controller/CreateVolume" code="InvalidArgument"`, `method="/csi.v1.Identity/Probe"`, "***stripped***"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
}
