// grpcprobe: the kubelet's grpc probe, as a command, for probed's tests and bench.
//
// It does what k8s.io/kubernetes/pkg/probe/grpc does for one probe: dial plaintext HTTP/2 with
// grpc-go (WithInsecure, WithBlock, user agent "kube-probe/1.x"), call
// grpc.health.v1.Health/Check with the probe's service name under the probe's timeout, and
// pass only on SERVING. -n repeats the probe (a new connection each time, as the kubelet does)
// and prints each probe's microseconds; -watch follows Health/Watch and prints each status.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func probe(addr, service string, timeout time.Duration) (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithUserAgent("kube-probe/1.31"))
	if err != nil {
		return "connect: " + err.Error(), false
	}
	defer conn.Close()
	client := grpc_health_v1.NewHealthClient(conn)
	reply, err := client.Check(metadata.NewOutgoingContext(ctx, metadata.MD{}),
		&grpc_health_v1.HealthCheckRequest{Service: service})
	if err != nil {
		st, _ := status.FromError(err)
		return fmt.Sprintf("rpc error: code = %s desc = %s", st.Code(), st.Message()), false
	}
	return reply.GetStatus().String(), reply.GetStatus() == grpc_health_v1.HealthCheckResponse_SERVING
}

func watch(addr, service string, timeout time.Duration, count int) int {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		fmt.Println("connect:", err)
		return 2
	}
	defer conn.Close()
	stream, err := grpc_health_v1.NewHealthClient(conn).Watch(ctx,
		&grpc_health_v1.HealthCheckRequest{Service: service})
	if err != nil {
		fmt.Println("watch:", err)
		return 2
	}
	for i := 0; i < count; i++ {
		reply, err := stream.Recv()
		if err != nil {
			st, _ := status.FromError(err)
			fmt.Printf("rpc error: code = %s desc = %s\n", st.Code(), st.Message())
			return 1
		}
		fmt.Println(reply.GetStatus().String())
	}
	return 0
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "host:port")
	service := flag.String("service", "", "health service name")
	timeout := flag.Duration("timeout", time.Second, "the probe's timeoutSeconds")
	repeat := flag.Int("n", 1, "probes to run, each on a new connection; >1 prints microseconds")
	follow := flag.Int("watch", 0, "Health/Watch: print this many statuses, then exit")
	flag.Parse()
	if *follow > 0 {
		os.Exit(watch(*addr, *service, *timeout, *follow))
	}
	if *repeat > 1 {
		for i := 0; i < *repeat; i++ {
			start := time.Now()
			out, ok := probe(*addr, *service, *timeout)
			if !ok {
				fmt.Println("failed:", out)
				os.Exit(1)
			}
			fmt.Println(time.Since(start).Microseconds())
		}
		return
	}
	out, ok := probe(*addr, *service, *timeout)
	fmt.Println(out)
	if !ok {
		os.Exit(1)
	}
}
