/** Where the CLI's page server proxies the Worker and the data (shared by the Node proxy and the page). */
export const API_PREFIX = "/api";
export const DATA_PATH = "/data";
export const KEY_HEADER = "x-sae-swarm-key";
