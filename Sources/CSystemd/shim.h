#ifndef RELAY_CSYSTEMD_SHIM_H
#define RELAY_CSYSTEMD_SHIM_H
#include <systemd/sd-daemon.h>
#endif
