// Command probe reports what a program sees under the executor: its seed,
// environment, clocks and filesystem, and a sample of seeded randomness.
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"time"
)

func main() {
	exit := flag.Int("exit", -1, "exit at once with this status")
	spin := flag.Bool("spin", false, "compute forever without sleeping")
	flag.Parse()
	if *exit >= 0 {
		os.Exit(*exit)
	}
	if *spin {
		for i := 0; ; i++ {
			_ = i * i
		}
	}
	fmt.Printf("seed=%s extra=%s home=%s\n", os.Getenv("DST_SEED"), os.Getenv("KELPIE_EXTRA"), os.Getenv("HOME"))
	env := os.Environ()
	sort.Strings(env)
	fmt.Println("env:", strings.Join(env, " "))
	start := time.Now()
	time.Sleep(time.Hour)
	fmt.Printf("slept=%s wall=%s\n", time.Since(start).Truncate(time.Second), time.Now().UTC().Format(time.RFC3339))
	m := map[int]bool{}
	for i := 0; i < 16; i++ {
		m[i] = true
	}
	var order []int
	for k := range m {
		order = append(order, k)
	}
	fmt.Println("map order:", order, "rand:", rand.Uint64())
	if err := os.WriteFile(os.TempDir()+"/x", []byte("x"), 0o644); err != nil {
		fmt.Println("tmp-write:", err)
	} else {
		fmt.Println("tmp-write=ok")
	}
	if _, err := os.ReadFile("testdata/probe/main.go"); err != nil {
		fmt.Println("testdata-read:", err)
	} else {
		fmt.Println("testdata-read=ok")
	}
}
