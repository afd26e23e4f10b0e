/*
 * A fake libnvidia-ml.so.1 for probed's gpu check tests: the real C ABI of the NVML calls the
 * check makes (signatures, struct layouts and return codes as NVIDIA's nvml.h declares them,
 * API version 13, read in NVIDIA/go-nvml gen/nvml/nvml.h), driven by a small text file a test
 * writes. Built at test time: cc -shared -fPIC -o DIR/libnvidia-ml.so.1 fake_nvml.c
 * (-DFAKE_OLD_DRIVER leaves out the functions an older driver lacks).
 *
 * The state file is named by $FAKE_NVML_STATE and re-read whenever it changes (tests replace it
 * with a rename). One line per fact, '#' starts a comment:
 *   init_error CODE          nvmlInit_v2 returns CODE
 *   driver TEXT              nvmlSystemGetDriverVersion
 *   count N                  devices NVML enumerates (at most FAKE_MAX_DEVICES)
 *   uuid I TEXT              device I's UUID (default GPU-00000000-0000-0000-0000-00000000000I)
 *   ecc_mode I 0|1|unsupported   current ECC mode (default 1)
 *   ecc I N                  volatile uncorrected ECC errors of device I
 *   remap I CORR UNC PENDING FAILURE   nvmlDeviceGetRemappedRows
 *   recovery I N|unsupported NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (field 230) of device I
 *   lost I                   every call on device I returns NVML_ERROR_GPU_IS_LOST
 *   supported_events I MASK  what nvmlDeviceGetSupportedEventTypes reports (default 0xffff)
 *   ret FUNCTION CODE        FUNCTION returns CODE (3 NOT_SUPPORTED, 13 FUNCTION_NOT_FOUND ...)
 *   hang_ms N                every per-device read sleeps N ms (a hung driver)
 *   event I TYPE DATA        an event on device I; each is delivered once, in file order; events
 *                            already in the file when a device registers are never delivered
 *                            (nvml.h: "All events that occurred before this call are not recorded")
 * $FAKE_NVML_LOG, when set, names a file each call appends a line to ("FUNCTION [detail]").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

#define FAKE_MAX_DEVICES 16
#define FAKE_MAX_EVENTS 4096
#define FAKE_MAX_RETS 32
#define FAKE_UNSUPPORTED -1

typedef int nvmlReturn_t;
typedef struct fake_device *nvmlDevice_t;
typedef struct fake_event_set *nvmlEventSet_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

typedef struct { /* the layout of nvmlEventData_t before the _v2 wait added instance ids */
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
} nvmlEventData_v1_t;

typedef union {
    double dVal;
    int siVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    signed long long sllVal;
    unsigned short usVal;
} nvmlValue_t;

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    int valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

struct fake_device {
    int index;
    char uuid[96];
    int ecc_mode;
    unsigned long long ecc;
    unsigned int remap[4];
    long long recovery;
    int lost;
    unsigned long long supported;
    unsigned long long registered;
};

struct fake_event { int device; unsigned long long type, data; };
struct fake_ret { char name[64]; int code; };

struct fake_event_set { int used; };

static struct {
    int init_error;
    char driver[80];
    int count;
    int hang_ms;
    int nevents;
    int nrets;
    struct fake_event events[FAKE_MAX_EVENTS];
    struct fake_ret rets[FAKE_MAX_RETS];
} state;

static struct fake_device devices[FAKE_MAX_DEVICES];
static struct fake_event_set the_set;
static int initialized;
static int delivered; /* events before this index were delivered or predate registration */
static struct stat loaded;

static void fake_log(const char *fmt, const char *name, long long detail) {
    const char *path = getenv("FAKE_NVML_LOG");
    if (!path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    fprintf(f, fmt, name, detail);
    fputc('\n', f);
    fclose(f);
}

static void reset_state(void) {
    memset(&state, 0, sizeof state);
    strcpy(state.driver, "999.99.99-fake");
    for (int i = 0; i < FAKE_MAX_DEVICES; i++) {
        unsigned long long registered = devices[i].registered;
        memset(&devices[i], 0, sizeof devices[i]);
        devices[i].index = i;
        devices[i].registered = registered;
        snprintf(devices[i].uuid, sizeof devices[i].uuid,
                 "GPU-00000000-0000-0000-0000-%012d", i);
        devices[i].ecc_mode = 1;
        devices[i].supported = 0xffffULL;
    }
}

static int device_arg(const char *text) {
    int i = atoi(text);
    return (i >= 0 && i < FAKE_MAX_DEVICES) ? i : -1;
}

static void parse_line(char *line) {
    char key[64], a[128], b[128], c[64], d[64], e[64];
    int n = sscanf(line, "%63s %127s %127s %63s %63s %63s", key, a, b, c, d, e);
    if (n < 2 || key[0] == '#') return;
    int i = device_arg(a);
    if (!strcmp(key, "init_error")) state.init_error = atoi(a);
    else if (!strcmp(key, "driver")) snprintf(state.driver, sizeof state.driver, "%.79s", a);
    else if (!strcmp(key, "count")) {
        state.count = atoi(a);
        if (state.count > FAKE_MAX_DEVICES) state.count = FAKE_MAX_DEVICES;
    }
    else if (!strcmp(key, "hang_ms")) state.hang_ms = atoi(a);
    else if (!strcmp(key, "ret") && n >= 3 && state.nrets < FAKE_MAX_RETS) {
        snprintf(state.rets[state.nrets].name, 64, "%.63s", a);
        state.rets[state.nrets++].code = atoi(b);
    }
    else if (i < 0 || n < 3) {
        if (!strcmp(key, "lost") && i >= 0) devices[i].lost = 1;
    }
    else if (!strcmp(key, "uuid")) snprintf(devices[i].uuid, sizeof devices[i].uuid, "%.95s", b);
    else if (!strcmp(key, "ecc_mode"))
        devices[i].ecc_mode = strcmp(b, "unsupported") ? atoi(b) : FAKE_UNSUPPORTED;
    else if (!strcmp(key, "ecc")) devices[i].ecc = strtoull(b, NULL, 0);
    else if (!strcmp(key, "remap") && n >= 6) {
        devices[i].remap[0] = (unsigned)atoi(b);
        devices[i].remap[1] = (unsigned)atoi(c);
        devices[i].remap[2] = (unsigned)atoi(d);
        devices[i].remap[3] = (unsigned)atoi(e);
    }
    else if (!strcmp(key, "recovery"))
        devices[i].recovery = strcmp(b, "unsupported") ? atoll(b) : FAKE_UNSUPPORTED;
    else if (!strcmp(key, "supported_events")) devices[i].supported = strtoull(b, NULL, 0);
    else if (!strcmp(key, "event") && n >= 4 && state.nevents < FAKE_MAX_EVENTS) {
        state.events[state.nevents].device = i;
        state.events[state.nevents].type = strtoull(b, NULL, 0);
        state.events[state.nevents++].data = strtoull(c, NULL, 0);
    }
}

/* Re-read the state file when it changed (a test replaces it with a rename: a new inode). */
static void load(void) {
    const char *path = getenv("FAKE_NVML_STATE");
    struct stat st;
    if (!path || stat(path, &st) != 0) { /* no file: defaults (no devices) */
        if (loaded.st_ino != 0 || state.driver[0] == 0) {
            reset_state();
            memset(&loaded, 0, sizeof loaded);
        }
        return;
    }
    if (st.st_ino == loaded.st_ino && st.st_mtime == loaded.st_mtime && st.st_size == loaded.st_size
        && st.st_mtim.tv_nsec == loaded.st_mtim.tv_nsec)
        return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    reset_state();
    char line[512];
    while (fgets(line, sizeof line, f)) parse_line(line);
    fclose(f);
    loaded = st;
}

static int forced(const char *name) {
    for (int i = 0; i < state.nrets; i++)
        if (!strcmp(state.rets[i].name, name)) return state.rets[i].code;
    return 0;
}

static void hang(void) {
    if (state.hang_ms > 0) {
        struct timespec ts = {state.hang_ms / 1000, (state.hang_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Common entry of every per-device call: load, log, initialized, valid handle, forced codes. */
static nvmlReturn_t enter(const char *name, nvmlDevice_t device) {
    load();
    fake_log("%s %lld", name, device ? (long long)device->index : -1LL);
    if (!initialized) return 1; /* NVML_ERROR_UNINITIALIZED */
    if (device && (device < devices || device >= devices + state.count)) return 2;
    int code = forced(name);
    if (code) return code;
    if (device && device->lost) return 15; /* NVML_ERROR_GPU_IS_LOST */
    return 0;
}

nvmlReturn_t nvmlInit_v2(void) {
    load();
    fake_log("%s %lld", "nvmlInit_v2", 0);
    if (state.init_error) return state.init_error;
    initialized = 1;
    return 0;
}

nvmlReturn_t nvmlShutdown(void) {
    load();
    fake_log("%s %lld", "nvmlShutdown", 0);
    initialized = 0;
    for (int i = 0; i < FAKE_MAX_DEVICES; i++) devices[i].registered = 0;
    return 0;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 13: return "Function Not Found";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    nvmlReturn_t r = enter("nvmlSystemGetDriverVersion", NULL);
    if (r) return r;
    if (strlen(state.driver) + 1 > length) return 7; /* NVML_ERROR_INSUFFICIENT_SIZE */
    strcpy(version, state.driver);
    return 0;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    nvmlReturn_t r = enter("nvmlDeviceGetCount_v2", NULL);
    if (r) return r;
    *count = (unsigned)state.count;
    return 0;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    nvmlReturn_t r = enter("nvmlDeviceGetHandleByIndex_v2", NULL);
    if (r) return r;
    if (index >= (unsigned)state.count) return 2;
    *device = &devices[index];
    return devices[index].lost ? 15 : 0;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    nvmlReturn_t r = enter("nvmlDeviceGetUUID", device);
    if (r) return r;
    if (strlen(device->uuid) + 1 > length) return 7;
    strcpy(uuid, device->uuid);
    return 0;
}

nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t device, int *current, int *pending) {
    nvmlReturn_t r = enter("nvmlDeviceGetEccMode", device);
    if (r) return r;
    if (device->ecc_mode == FAKE_UNSUPPORTED) return 3;
    *current = *pending = device->ecc_mode;
    return 0;
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int errorType, int counterType,
                                         unsigned long long *eccCounts) {
    nvmlReturn_t r = enter("nvmlDeviceGetTotalEccErrors", device);
    if (r) return r;
    hang();
    if (device->ecc_mode != 1) return 3;
    /* Only (UNCORRECTED=1, VOLATILE=0) gives the scripted count: a caller that mixes up the
     * enums reads numbers no test expects. */
    if (errorType == 1 && counterType == 0) *eccCounts = device->ecc;
    else if (errorType == 1 && counterType == 1) *eccCounts = device->ecc + 1000;
    else *eccCounts = 7777;
    return 0;
}

#ifndef FAKE_OLD_DRIVER
nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows,
                                       unsigned int *uncRows, unsigned int *isPending,
                                       unsigned int *failureOccurred) {
    nvmlReturn_t r = enter("nvmlDeviceGetRemappedRows", device);
    if (r) return r;
    hang();
    *corrRows = device->remap[0];
    *uncRows = device->remap[1];
    *isPending = device->remap[2];
    *failureOccurred = device->remap[3];
    return 0;
}

nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount,
                                      nvmlFieldValue_t *values) {
    nvmlReturn_t r = enter("nvmlDeviceGetFieldValues", device);
    if (r) return r;
    hang();
    if (valuesCount <= 0 || !values) return 2;
    for (int i = 0; i < valuesCount; i++) {
        values[i].timestamp = 0;
        values[i].latencyUsec = 0;
        if (values[i].fieldId == 230 && device->recovery != FAKE_UNSUPPORTED) {
            values[i].valueType = 1; /* NVML_VALUE_TYPE_UNSIGNED_INT */
            values[i].nvmlReturn = 0;
            values[i].value.ullVal = 0;
            values[i].value.uiVal = (unsigned)device->recovery;
        } else {
            values[i].nvmlReturn = 3;
        }
    }
    return 0;
}
#endif

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    nvmlReturn_t r = enter("nvmlEventSetCreate", NULL);
    if (r) return r;
    the_set.used = 1;
    *set = &the_set;
    return 0;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types) {
    nvmlReturn_t r = enter("nvmlDeviceGetSupportedEventTypes", device);
    if (r) return r;
    *types = device->supported;
    return 0;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes,
                                      nvmlEventSet_t set) {
    nvmlReturn_t r = enter("nvmlDeviceRegisterEvents", device);
    fake_log("%s mask=%lld", "nvmlDeviceRegisterEvents", (long long)eventTypes);
    if (r) return r;
    if (set != &the_set) return 2;
    /* nvml.h: NOT_SUPPORTED when some requested type is unsupported, and then none is. */
    if (eventTypes & ~device->supported) return 3;
    device->registered |= eventTypes;
    delivered = state.nevents;
    return 0;
}

static nvmlReturn_t wait_event(const char *name, nvmlEventSet_t set, nvmlEventData_t *out,
                               unsigned int timeoutms) {
    nvmlReturn_t r = enter(name, NULL);
    fake_log("%s timeout=%lld", name, (long long)timeoutms);
    if (r) return r;
    if (set != &the_set || !out) return 2;
    while (delivered < state.nevents) {
        struct fake_event *e = &state.events[delivered++];
        if (e->device < 0 || e->device >= state.count) continue;
        if (!(devices[e->device].registered & e->type)) continue;
        out->device = &devices[e->device];
        out->eventType = e->type;
        out->eventData = e->data;
        out->gpuInstanceId = 0xFFFFFFFFu;
        out->computeInstanceId = 0xFFFFFFFFu;
        return 0;
    }
    if (timeoutms > 0) { /* a real wait sleeps until an event or the timeout */
        struct timespec ts = {timeoutms / 1000, (timeoutms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 10; /* NVML_ERROR_TIMEOUT */
}

#ifndef FAKE_OLD_DRIVER
nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                 unsigned int timeoutms) {
    return wait_event("nvmlEventSetWait_v2", set, data, timeoutms);
}
#endif

nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_v1_t *data,
                              unsigned int timeoutms) {
    nvmlEventData_t full;
    nvmlReturn_t r = wait_event("nvmlEventSetWait", set, data ? &full : NULL, timeoutms);
    if (r == 0) {
        data->device = full.device;
        data->eventType = full.eventType;
        data->eventData = full.eventData;
    }
    return r;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    nvmlReturn_t r = enter("nvmlEventSetFree", NULL);
    if (r) return r;
    if (set != &the_set) return 2;
    the_set.used = 0;
    return 0;
}
