// The header declares libFuzzer's driver; its definition comes with -sanitize=fuzzer.
#include "CLibFuzzer.h"
