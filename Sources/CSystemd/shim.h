#ifndef RELAY_CSYSTEMD_SHIM_H
#define RELAY_CSYSTEMD_SHIM_H
#include <systemd/sd-daemon.h>
#include <systemd/sd-bus.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The type of the job systemd runs on this process's unit now ("restart", "stop", ...),
 * asked over the system bus: the unit of this PID, its Job property, then that job's JobType. Copies it
 * into `buffer` (NUL-terminated, truncated to `size`) and returns 0; returns 1 when the
 * unit has no job, a negative errno when something could not be asked. `store_max` gets
 * the service's FileDescriptorStoreMax (0 when it cannot be read). */
static inline int relay_sd_unit_job_type(char *buffer, size_t size, uint32_t *store_max) {
    char *type = NULL;
    sd_bus *bus = NULL;
    sd_bus_message *unit_reply = NULL, *reply = NULL, *max = NULL;
    sd_bus_error error = SD_BUS_ERROR_NULL;
    uint32_t id = 0;
    const char *path = NULL, *job = NULL;
    *store_max = 0;
    int r = sd_bus_open_system(&bus);
    if (r < 0) goto done;
    /* The unit by our PID: sd_pid_get_unit() would read PID 1's cgroup, which a unit with
     * ProtectProc=invisible cannot see. */
    r = sd_bus_call_method(bus, "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                           "org.freedesktop.systemd1.Manager", "GetUnitByPID", &error, &unit_reply, "u",
                           (uint32_t)getpid());
    if (r < 0) goto done;
    r = sd_bus_message_read(unit_reply, "o", &path);
    if (r < 0) goto done;
    if (sd_bus_get_property(bus, "org.freedesktop.systemd1", path, "org.freedesktop.systemd1.Service",
                            "FileDescriptorStoreMax", &error, &max, "u") >= 0)
        (void)sd_bus_message_read(max, "u", store_max);
    sd_bus_error_free(&error);
    r = sd_bus_get_property(bus, "org.freedesktop.systemd1", path, "org.freedesktop.systemd1.Unit", "Job",
                            &error, &reply, "(uo)");
    if (r < 0) goto done;
    r = sd_bus_message_read(reply, "(uo)", &id, &job);
    if (r < 0) goto done;
    if (id == 0) { r = 1; goto done; }
    r = sd_bus_get_property_string(bus, "org.freedesktop.systemd1", job, "org.freedesktop.systemd1.Job",
                                   "JobType", &error, &type);
    if (r < 0) goto done;
    if (size > 0) {
        strncpy(buffer, type, size - 1);
        buffer[size - 1] = 0;
    }
    r = 0;
done:
    sd_bus_error_free(&error);
    sd_bus_message_unref(max);
    sd_bus_message_unref(reply);
    sd_bus_message_unref(unit_reply);
    sd_bus_flush_close_unref(bus);
    free(type);
    return r;
}

/* memfd_create(name, MFD_CLOEXEC), which Swift's Glibc module leaves out. */
static inline int relay_memfd_create(const char *name) {
    return (int)syscall(SYS_memfd_create, name, 1u);
}
#endif
