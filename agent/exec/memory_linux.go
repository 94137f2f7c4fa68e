package exec

import "syscall"

// totalMemory is the machine's total RAM in bytes, from sysinfo(2).
func totalMemory() (int64, error) {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil {
		return 0, err
	}
	return int64(si.Totalram) * int64(si.Unit), nil
}
