// The chat demo: rooms with history (a page that reconnects misses nothing), who is online
// through presence on the `online` channel, and the connection's state. Query parameters:
// `node` (the WebSocket URL; default ws://127.0.0.1:8080/ws), `name`, `room`.
import { Switchboard } from "../../clients/js/dist/index.js";

const ROOMS = ["lobby", "random"];
const params = new URLSearchParams(location.search);
const name = params.get("name") || `guest-${Math.floor(Math.random() * 1000)}`;
const sb = new Switchboard(params.get("node") || "ws://127.0.0.1:8080/ws");
// For the browser's console (and the browser test): `switchboard.state`, `switchboard.welcome`.
window.switchboard = sb;
const $ = (id) => document.getElementById(id);
const people = new Map(); // connection id → name

$("me").textContent = `you are ${name}`;
sb.on("state", (state) => {
  $("state").textContent = state;
  $("state").dataset.state = state;
});

// Who is online: presence events say who joined and left; names travel as `hello` messages,
// sent on arrival and to every newcomer.
const online = sb.channel("online");
const hello = () => online.publish({ hello: name, connection: sb.welcome.connection_id }).catch(() => {});
online.on("joined", hello);
online.on("presence", (event) => {
  if (event.left) people.delete(event.left.connection);
  if (event.joined && event.joined.connection !== sb.welcome?.connection_id) hello();
  showPeople();
});
online.on("message", (data) => {
  if (typeof data?.hello === "string") people.set(data.connection, data.hello);
  showPeople();
});
function showPeople() {
  $("online").replaceChildren(...[...new Set(people.values())].sort().map((person) => {
    const item = document.createElement("li");
    item.textContent = person;
    return item;
  }));
}

let room = null;
function enter(roomName) {
  room?.leave();
  $("messages").replaceChildren();
  room = sb.channel(`chat:${roomName}`);
  room.on("message", (data) => say(data.name, data.text));
  room.on("reset", () => notice("some messages could not be recovered"));
  for (const button of $("rooms").children) button.setAttribute("aria-current", button.textContent === roomName);
}
function say(who, text) {
  const item = document.createElement("li");
  const author = document.createElement("b");
  author.textContent = who;
  item.append(author, document.createTextNode(text));
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
}
function notice(text) {
  const item = document.createElement("li");
  item.className = "notice";
  item.textContent = text;
  $("messages").append(item);
}

$("rooms").append(...ROOMS.map((roomName) => {
  const button = document.createElement("button");
  button.textContent = roomName;
  button.onclick = () => enter(roomName);
  return button;
}));
$("compose").onsubmit = (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  room.publish({ name, text }).catch((error) => notice(`not sent: ${error.message}`));
};

enter(params.get("room") || ROOMS[0]);
sb.connect();
