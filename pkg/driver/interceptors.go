package driver

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
)

// interceptors are what every call passes through, outermost first: the
// call is logged once with its outcome, a panic in what follows becomes
// INTERNAL for that call alone, and volume calls wait for the inventory.
func (d *Driver) interceptors() []grpc.UnaryServerInterceptor {
	return []grpc.UnaryServerInterceptor{logRPC, recoverPanic, d.requireReady}
}

// logRPC logs every call once with secrets stripped, and its outcome. What
// a call can add to the log is bounded (see forLog), whatever it carries.
func logRPC(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	klog.V(4).InfoS("GRPC request", "method", info.FullMethod, "request", forLog(req))
	resp, err := handler(ctx, req)
	if err != nil {
		klog.ErrorS(errForLog(err), "GRPC failed", "method", info.FullMethod, "code", status.Code(err), "request", forLog(req), "duration", time.Since(start))
	} else {
		klog.V(2).InfoS("GRPC done", "method", info.FullMethod, "request", forLog(req), "response", forLog(resp), "duration", time.Since(start))
	}
	return resp, err
}

// recoverPanic answers INTERNAL when the handler panics, after logging the
// panic and the top of the stack: one bad call must not end the process
// and, with it, every other volume's calls. Locks the handler took with
// defer are released by the unwinding.
func recoverPanic(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		klog.ErrorS(nil, "GRPC handler panicked", "method", info.FullMethod,
			"panic", capString(fmt.Sprint(p), logMaxError), "stack", capString(string(debug.Stack()), logMaxStack))
		resp, err = nil, status.Errorf(codes.Internal, "%s: internal error (the driver logged a panic); other calls are unaffected", info.FullMethod)
	}()
	return handler(ctx, req)
}

// requireReady answers UNAVAILABLE to every Controller and Node call but the
// capability queries until the inventory has started; a call that arrives
// while it is starting first waits for it, up to StartWait. The message
// carries the start-up error once start-up has failed for good. Every volume call
// needs the loaded state: NodeGetInfo's limit is cached by the kubelet, and
// NodeUnpublishVolume of a block volume needs the volume's device. Identity
// calls always answer; Probe reports readiness.
func (d *Driver) requireReady(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if needsInventory(info.FullMethod) {
		if ready, _ := d.cfg.Inventory.Ready(); !ready && d.cfg.StartWait > 0 {
			wait, cancel := context.WithTimeout(ctx, d.cfg.StartWait)
			d.cfg.Inventory.WaitStarted(wait)
			cancel()
		}
		if ready, err := d.cfg.Inventory.Ready(); !ready {
			if err != nil {
				return nil, toStatus(fmt.Errorf("%w: start-up failed: %v", inventory.ErrNotReady, err))
			}
			return nil, toStatus(inventory.ErrNotReady)
		}
	}
	return handler(ctx, req)
}

// needsInventory says whether a method answers only once the inventory is
// ready: all of the Controller and Node services except their capabilities.
func needsInventory(method string) bool {
	switch method {
	case csi.Controller_ControllerGetCapabilities_FullMethodName, csi.Node_NodeGetCapabilities_FullMethodName:
		return false
	}
	return strings.HasPrefix(method, "/"+csi.Controller_ServiceDesc.ServiceName+"/") ||
		strings.HasPrefix(method, "/"+csi.Node_ServiceDesc.ServiceName+"/")
}
